"""A worker process that an entry point spawns (rembg cut-outs, the benchmark's measuring processes) starts in
about a second, not in the ten that importing Lightning and torch take here.

``multiprocessing``'s spawn and forkserver start methods run the parent's main module again in every worker,
under the name ``__mp_main__`` (``runpy.run_path`` for ``python train.py``, ``runpy.run_module`` for ``python -m
...`` and the console scripts, which import the same module): whatever an entry point imports at the top, each
worker imports too. So every entry point imports its heavy libraries only once it runs.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import tomllib

from tests.helpers.workplace import REPO_ROOT, checkout_env

HEAVY = ("lightning", "torchmetrics", "torch", "torchvision", "timm")

CONSOLE_SCRIPT_MODULES = sorted(
    {
        target.split(":")[0]
        for target in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"].values()
    }
)


def _imported_as_a_worker_does(run: str) -> list[str]:
    """The heavy libraries a fresh interpreter holds after ``run`` re-runs an entry point as ``__mp_main__``."""
    probe = f"import runpy, sys\n{run}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, env=checkout_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


@pytest.mark.parametrize("script", ["train.py", "sweep.py"])
def test_a_worker_spawned_by_a_script_imports_no_heavy_library(script):
    assert _imported_as_a_worker_does(f"runpy.run_path({script!r}, run_name='__mp_main__')") == []


@pytest.mark.parametrize("module", CONSOLE_SCRIPT_MODULES)
def test_a_worker_spawned_by_a_command_imports_no_heavy_library(module):
    assert len(CONSOLE_SCRIPT_MODULES) == 8  # pyproject.toml's [project.scripts]: each command is checked
    run = f"runpy.run_module({module!r}, run_name='__mp_main__', alter_sys=True)"
    assert _imported_as_a_worker_does(run) == []


def test_the_probe_sees_a_heavy_import(tmp_path):
    # The checks above can fail: an entry point that imports the training code at the top is caught.
    script = tmp_path / "train.py"
    script.write_text("from gem_lightning.training.run import train\n")
    assert "lightning" in _imported_as_a_worker_does(f"runpy.run_path({str(script)!r}, run_name='__mp_main__')")
