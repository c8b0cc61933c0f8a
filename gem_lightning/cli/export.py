"""``gem-export ckpt=...`` (or ``python -m gem_lightning.cli.export``): write ONNX and TorchScript files.

What the files hold and how they are checked: ``gem_lightning.export.formats``.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from gem_lightning.cli.front_end import run_command


def run(cfg: DictConfig) -> int:
    # Imported once running: a worker this spawns runs this module again (tests/machine/test_spawned_workers.py).
    from gem_lightning.export.formats import export_checkpoint
    from gem_lightning.inference.user_photos import find_images

    files = find_images(cfg.input) if cfg.input else None
    checkpoint = cfg.ckpt if isinstance(cfg.ckpt, str) else list(cfg.ckpt)
    checks = export_checkpoint(
        checkpoint,
        cfg.output_dir,
        tuple(cfg.formats),
        files,
        cfg.tolerance,
        cfg.tta,
        set_coverage=cfg.prediction_sets.coverage,
    )
    for check in checks:
        print(
            f"{check.file}: probabilities match PyTorch within {check.max_abs_difference:.2e} "
            f"(batch sizes {', '.join(map(str, check.batch_sizes))})"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    description = "Export a checkpoint to ONNX and TorchScript and check both against PyTorch."
    return run_command("export", description, run, argv)


if __name__ == "__main__":
    sys.exit(main())
