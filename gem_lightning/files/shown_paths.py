"""Paths as a command prints them: relative to the folder the user started in when they lie inside it.

Runs resolve their folders from the project root (``conf/paths``), so the paths they hold are absolute; on
screen ``outputs/demo/runs/<time>/checkpoints/best.ckpt`` is what a user started in the project folder can
paste into the next command, while a run started elsewhere still gets a path that works from there.
"""

from __future__ import annotations

import os
from pathlib import Path


def shown_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory if it lies inside it, else absolute."""
    absolute = Path(path).absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)
