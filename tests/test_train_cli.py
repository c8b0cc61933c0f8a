"""``python train.py`` as a user runs it: a real Hydra app in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT, TINY_DEMO


def test_train_py_on_demo_data_prints_the_run_dir_best_checkpoint_and_metrics(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", *TINY_DEMO, "trainer.max_epochs=2", f"paths.root_dir={tmp_path}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "test/acc" in out and "val/acc_best" in out
    run_dirs = list((tmp_path / "outputs" / "demo" / "runs").iterdir())
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    assert f"run dir: {run_dir}" in out
    best = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    assert f"best checkpoint: {best}" in out
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert Path(tmp_path / "cache" / "demo_gems").is_dir()  # the demo set was rendered into the cache
