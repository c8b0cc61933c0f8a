"""``python -m gem_lightning.prepare`` (or ``gem-prepare``): prepare a gem folder before training.

It composes the same Hydra config as ``train.py`` and takes the same overrides, so

    python -m gem_lightning.prepare background=rembg background.backend.model=u2netp

prepares exactly what ``python train.py background=rembg background.backend.model=u2netp`` will train on
(scan, duplicate groups, split manifest, background removal into the cache, data report), and the training
run then finds everything cached. ``--check`` only says whether everything needed is present.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig

from gem_lightning.config_schema import register_config_schemas
from gem_lightning.data_report import CONTACT_SHEET_NAME, print_report
from gem_lightning.errors import GemLightningError, find_user_error

# The repository's conf/ beside this package (an editable install, as the README sets up).
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gem_lightning.prepare",
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


def compose_train_config(config_dir: Path, overrides: list[str]) -> DictConfig:
    """The config train.py would compose for ``overrides`` (without starting a run)."""
    if not (config_dir / "train.yaml").is_file():
        raise GemLightningError(f"no train.yaml in {config_dir}: pass --config-dir with the project's conf/ folder")
    register_config_schemas()
    with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    # ${hydra:runtime.cwd} in conf/paths needs the Hydra config set, as inside a real run.
    HydraConfig.instance().set_config(cfg)
    return cfg


def run(args: argparse.Namespace) -> int:
    cfg = compose_train_config(args.config_dir, args.overrides)
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
    print_report(datamodule.report)
    print(f"manifest: {datamodule.manifest_file}")
    print(f"report: {datamodule.report_file}")
    print(f"contact sheet: {datamodule.report_file.parent / CONTACT_SHEET_NAME}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        return run(args)
    except Exception as error:
        # Ours, wherever Hydra wrapped it; else a bad override (unknown key, wrong type), whose own message
        # says which. Anything else is a bug and keeps its traceback.
        user_error = find_user_error(error) or (error if isinstance(error, HydraException) else None)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
