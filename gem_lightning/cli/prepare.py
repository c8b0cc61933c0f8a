"""``python -m gem_lightning.cli.prepare`` (or ``gem-prepare``): prepare a gem folder before training."""

# It composes the same Hydra config as ``train.py`` and takes the same overrides, so
#
#     python -m gem_lightning.cli.prepare background=rembg background.backend.model=u2netp
#
# prepares exactly what ``python train.py background=rembg background.backend.model=u2netp`` will train on
# (scan, duplicate groups, split manifest, background removal into the cache, data report), and the training
# run then finds everything cached. ``--check`` only says whether everything needed is present.

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import hydra

from gem_lightning.cli.front_end import run_entry_point
from gem_lightning.config.composition import DEFAULT_CONFIG_DIR, compose_train_config
from gem_lightning.machine.garbage_collector import freeze_imported_objects


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gem_lightning.cli.prepare",
        description=(
            "Scan a gem folder, group duplicates, split it, cut out backgrounds into the cache and write "
            "data_report.json + contact_sheet.png, exactly as `python train.py <overrides>` would."
        ),
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides as for train.py, e.g. background=rembg background.backend.model=u2netp data.root=DIR",
    )
    parser.add_argument(
        "--check", action="store_true", help="only check that the data and the model files are present; do no work"
    )
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=DEFAULT_CONFIG_DIR,
        help=f"Hydra config folder (default {DEFAULT_CONFIG_DIR})",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    # Imported once running: a rembg worker this spawns runs this module again (tests/machine/test_spawned_workers.py).
    from gem_lightning.data.report import CONTACT_SHEET_NAME, print_report

    cfg = compose_train_config(args.config_dir, args.overrides)
    freeze_imported_objects()  # composing imported torch and Lightning (machine/garbage_collector.py says why)
    datamodule = hydra.utils.instantiate(cfg.data)
    if args.check:
        datamodule.check()
        background = datamodule.background
        needs = "original photos (background=none)"
        if background is not None:
            model_file = background.backend.model_file()
            needs = background.backend.describe() + (f" ({model_file})" if model_file else "")
        where = "rendered on first use" if cfg.data.demo else "found"
        print(f"ok: data {datamodule.root} {where}; background: {needs}; cache {Path(cfg.data.cache_dir).resolve()}")
        return 0
    datamodule.prepare_data()
    prepared = datamodule.prepared
    print_report(prepared.report)
    print(f"manifest: {prepared.manifest_file}")
    print(f"report: {prepared.report_file}")
    print(f"contact sheet: {prepared.report_file.parent / CONTACT_SHEET_NAME}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_entry_point(_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
