"""``python -m gem_lightning.cli.adapt ckpt=... input=<labelled folder>`` (or ``gem-adapt``): a checkpoint (or each
of an ensemble's, ``ckpt=[...]``) adapted to a user's source with a few labelled photos of it; ``curve=true``
measures how much N photos per class help."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from gem_lightning.cli.front_end import run_command
from gem_lightning.errors import GemLightningError
from gem_lightning.files.shown_paths import shown_path


def run(cfg: DictConfig) -> int:
    # Imported once running: a worker this spawns runs this module again (tests/machine/test_spawned_workers.py).
    from gem_lightning.adaptation.adapted_checkpoint import adapt_checkpoints
    from gem_lightning.adaptation.curve import adaptation_curve
    from gem_lightning.evaluation.checkpoint_evaluation import run_dir_of
    from gem_lightning.inference.predictor import Predictor

    folders = list(cfg.input) if isinstance(cfg.input, ListConfig) else [cfg.input]
    if cfg.curve:
        if any(count < 0 for count in cfg.shots) or cfg.draws < 1:
            raise GemLightningError(f"shots={list(cfg.shots)} and draws={cfg.draws}: give counts >= 0 and draws >= 1")
        predictor = Predictor.from_command_config(cfg)
        output_dir = Path(cfg.output_dir) if cfg.output_dir else run_dir_of(predictor.checkpoint) / "evaluation"
        table, _ = adaptation_curve(predictor, folders, list(cfg.shots), cfg.draws, cfg.weight, output_dir)
        print(table.read_text(), end="")
        print(f"curve: {shown_path(table.with_suffix('.png'))}")
        return 0
    if len(folders) != 1:
        raise GemLightningError("input= lists several folders: adapt to one source at a time (or measure, curve=true)")
    predictor = Predictor.from_command_config(cfg)
    adapted = adapt_checkpoints(predictor, folders[0], cfg.weight, cfg.output)
    shown = [shown_path(member.path) for member in adapted]
    fits = adapted[0].fits
    print(f"adapted to {fits.prototypes.describe(predictor.class_names)}")
    temperatures = ", ".join(f"{member.fits.calibration.temperature:.3f}" for member in adapted)
    fitted = ", ".join(str(int(member.fits.fitted_on.sum())) for member in adapted)
    print(f"temperature {temperatures} (fitted on {fitted} of those photos, each left out of its class)")
    print(f"adapted checkpoint{'s' if len(shown) > 1 else ''}: {', '.join(shown)}")
    ckpt = shown[0] if len(shown) == 1 else f"[{','.join(shown)}]"
    print(f"use it: python -m gem_lightning.cli.predict ckpt={ckpt} input=<photos>")
    return 0


def main(argv: list[str] | None = None) -> int:
    description = "Adapt a checkpoint to a source of photos with a few labelled ones, or measure how much that helps."
    return run_command("adapt", description, run, argv)


if __name__ == "__main__":
    sys.exit(main())
