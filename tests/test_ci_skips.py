"""Under CI a skip fails the run, but for a test marked cuda (tests/helpers/ci_skips.py), checked by pytest run
on a file of two skipping tests."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.workplace import checkout_env

SKIPPING = """
import pytest

def test_needs_a_server():
    pytest.skip("no server here")

@pytest.mark.cuda
def test_needs_a_gpu():
    pytest.skip("needs a CUDA device")
"""


def _pytest(folder, **env: str) -> str:
    command = [sys.executable, "-m", "pytest", "-p", "tests.helpers.ci_skips", "-p", "no:cacheprovider", "-q"]
    command += ["-o", "markers=cuda: needs a CUDA device", str(folder / "test_skipping.py")]
    environment = {k: v for k, v in checkout_env(**env).items() if k != "CI" or "CI" in env}
    return subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=120).stdout


def test_a_skip_fails_under_ci_unless_the_test_needs_cuda(tmp_path):
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    under_ci = _pytest(tmp_path, CI="true")
    assert "1 failed, 1 skipped" in under_ci
    assert "skipped under CI, where only tests marked cuda may skip: Skipped: no server here" in under_ci
    assert "2 skipped" in _pytest(tmp_path)
