"""``python train.py`` on the tiny demo as a user runs it, and the one error line it must print."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers.configs import TINY_DEMO
from tests.helpers.workplace import REPO_ROOT


def run_train(*overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python train.py <overrides>`` on the tiny demo, as a user runs it."""
    return subprocess.run(
        [sys.executable, "train.py", *TINY_DEMO, *overrides],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def the_one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return line


def epoch_logged(log_file: Path, epoch: int) -> bool:
    """Whether a run's ``train.log`` holds the line of epoch ``epoch`` (1-based) yet: a signal that costs a
    small read, where reading the checkpoint costs tens of MB."""
    return log_file.is_file() and re.search(rf"\] - epoch {epoch}/\d+: ", log_file.read_text()) is not None
