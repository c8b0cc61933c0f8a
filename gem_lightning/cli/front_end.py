"""The commands' one front end besides ``train.py``'s ``@hydra.main``: process set-up, arguments, exit status."""

# ``run_entry_point`` is what every command's ``main`` calls (prepare, sweep, predict, evaluate, adapt, export, web,
# bench). ``run_command`` adds the config commands' arguments: each is a Hydra override of ``conf/<command>.yaml``
# (``python -m gem_lightning.cli.predict ckpt=... input=...`` reads like ``train.py``), composed with the compose API,
# so these commands make no run folder; a required key left out (``???``) is named.

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gem_lightning.cli.library_noise import silence_library_noise
from gem_lightning.config.composition import DEFAULT_CONFIG_DIR, compose_config
from gem_lightning.errors import GemLightningError, exit_status_for
from gem_lightning.machine.garbage_collector import freeze_imported_objects
from gem_lightning.machine.memory_allocator import keep_freed_memory

# Hydra's own format, so every command logs as train.py does.
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def run_entry_point(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], int | None],
    argv: list[str] | None = None,
    intermixed: bool = False,
    interrupted: str | None = None,
) -> int:
    """Parse ``argv``, set the process up, call ``run(args)`` and return the exit status: 0, 2 with one line for
    a user error (a bug raises with its traceback), 130 with ``interrupted`` on Ctrl+C when that is given."""
    args = parser.parse_intermixed_args(argv) if intermixed else parser.parse_args(argv)
    keep_freed_memory()  # CPU steps stop page-faulting (gem_lightning.machine.memory_allocator says why)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    silence_library_noise()
    try:
        return run(args) or 0
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(interrupted, file=sys.stderr)
        return 130
    except Exception as error:
        return exit_status_for(error)


def run_command(config_name: str, description: str, run: Callable[[DictConfig], int | None], argv=None) -> int:
    """Parse ``argv`` as overrides of ``conf/<config_name>.yaml``, call ``run(cfg)``, return the exit status."""
    config_file = DEFAULT_CONFIG_DIR / f"{config_name}.yaml"
    # The config file is the reference for its keys: --help shows it, comments and defaults included.
    settings = config_file.read_text() if config_file.is_file() else ""
    parser = argparse.ArgumentParser(
        prog=f"python -m gem_lightning.cli.{config_name}",
        description=description,
        epilog=f"settings (key=value), from {config_file}:\n\n{settings}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. ckpt=outputs/.../best.ckpt")
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, help="Hydra config folder")

    def composed_run(args: argparse.Namespace) -> int | None:
        cfg = compose_config(config_name, args.overrides, args.config_dir)
        # Composing imported the model and data classes, and with them torch and Lightning (their schemas).
        freeze_imported_objects()
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            example = " ".join(f"{key}=..." for key in missing)
            raise GemLightningError(
                f"missing {', '.join(missing)}: python -m gem_lightning.cli.{config_name} {example}"
            )
        return run(cfg)

    return run_entry_point(parser, composed_run, argv)
