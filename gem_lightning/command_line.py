"""The inference commands' shared front end: Hydra-style ``key=value`` arguments composed over a config.

``python -m gem_lightning.predict ckpt=... input=...`` reads like ``train.py``: every argument is a Hydra
override of ``conf/<command>.yaml``, so an unknown key or a bad value is rejected by Hydra with its own
message, and a required key left out (``???``) is named. They use the compose API, not ``@hydra.main``:
these commands make no run folder and change no logging of their own.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gem_lightning.errors import GemLightningError, exit_status_for
from gem_lightning.library_noise import silence_library_noise
from gem_lightning.memory_allocator import keep_freed_memory
from gem_lightning.train_config import DEFAULT_CONFIG_DIR, compose_config


def run_command(config_name: str, description: str, run: Callable[[DictConfig], int | None], argv=None) -> int:
    """Parse ``argv`` as overrides of ``conf/<config_name>.yaml``, call ``run(cfg)``, return the exit status."""
    config_file = DEFAULT_CONFIG_DIR / f"{config_name}.yaml"
    # The config file is the reference for its keys: --help shows it, comments and defaults included.
    settings = config_file.read_text() if config_file.is_file() else ""
    parser = argparse.ArgumentParser(
        prog=f"python -m gem_lightning.{config_name}",
        description=description,
        epilog=f"settings (key=value), from {config_file}:\n\n{settings}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. ckpt=outputs/.../best.ckpt")
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, help="Hydra config folder")
    args = parser.parse_args(argv)
    keep_freed_memory()  # CPU inference stops page-faulting (gem_lightning.memory_allocator says why)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    silence_library_noise()
    try:
        cfg = compose_config(config_name, args.overrides, args.config_dir)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            example = " ".join(f"{key}=..." for key in missing)
            raise GemLightningError(f"missing {', '.join(missing)}: python -m gem_lightning.{config_name} {example}")
        return run(cfg) or 0
    except Exception as error:
        return exit_status_for(error)
