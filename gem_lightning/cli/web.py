"""``gem-web ckpt=...`` (or ``python -m gem_lightning.cli.web``): serve the identification page locally.

The page itself: ``gem_lightning.web.page``.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from omegaconf import DictConfig

from gem_lightning.cli.front_end import run_command
from gem_lightning.errors import GemLightningError


def _check_port_free(host: str, port: int) -> None:
    """One line for a port another program holds, instead of Gradio's traceback after the model has loaded."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise GemLightningError(
                f"cannot serve on {host}:{port} ({error.strerror}): another program uses it; choose one with port="
            ) from None


def run(cfg: DictConfig) -> int:
    # Imported once running: a worker this spawns runs this module again (tests/machine/test_spawned_workers.py).
    from gem_lightning.inference.predictor import Predictor
    from gem_lightning.trust.answers import answering_for
    from gem_lightning.web.page import build_page

    _check_port_free(cfg.host, cfg.port)  # before the model loads
    predictor = Predictor.from_command_config(cfg, progress=False)
    save_to = Path(cfg.save_to) if cfg.save_to else None
    page = build_page(predictor, answering_for(predictor, cfg), save_to)
    # Larger uploads are refused by Gradio before they are stored.
    page.launch(server_name=cfg.host, server_port=cfg.port, share=cfg.share, max_file_size=f"{cfg.max_upload_mb}mb")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("web", "Serve a local page that identifies uploaded gem photos.", run, argv)


if __name__ == "__main__":
    sys.exit(main())
