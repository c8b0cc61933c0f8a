"""``python train.py -m ...`` ends with one table of all jobs, printed and written as summary.csv."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from gem_lightning.training.multirun_summary import collect_rows
from tests.helpers.configs import TINY_DEMO
from tests.helpers.workplace import REPO_ROOT

LEAN = ("evaluate=false", "label_audit=none")


def test_a_multirun_prints_and_writes_a_summary_of_every_job(tmp_path):
    result = subprocess.run(
        # The summary's columns come from each job's metrics.json: no calibration report or label audit needed.
        [sys.executable, "train.py", "-m", *TINY_DEMO, *LEAN, "optim.lr=1e-3,3e-4", f"paths.root_dir={tmp_path}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "outputs" / "demo" / "multiruns").iterdir()
    with open(sweep_dir / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["varied"] for row in rows] == ["optim.lr=0.001", "optim.lr=0.0003"]
    for row in rows:
        job = json.loads((sweep_dir / row["job"] / "metrics.json").read_text())
        assert float(row["val/acc_best"]) == round(job["metrics"]["val/acc_best"], 6)
        assert float(row["test/acc"]) == round(job["metrics"]["test/acc"], 6)
        assert row["epochs"] == "1" and row["status"] == "done" and float(row["seconds"]) > 0
        assert "experiment=demo" in row["overrides"] and row["run_dir"] == str(sweep_dir / row["job"])
    assert "multirun: 2 job(s)" in result.stdout and f"summary: {sweep_dir / 'summary.csv'}" in result.stdout
    assert "optim.lr=0.0003" in result.stdout


def test_a_job_without_results_is_listed_as_failed(tmp_path):
    for job, lr in (("0", "0.1"), ("1", "0.2")):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- optim.lr={lr}\n- seed=1\n")
    result = {"metrics": {"val/acc_best": 0.5, "test/acc": 0.25}, "epochs": 3, "seconds": 12.0}
    (tmp_path / "0" / "metrics.json").write_text(json.dumps(result))
    first, second = collect_rows(tmp_path)
    assert (first["varied"], first["val/acc_best"], first["epochs"]) == ("optim.lr=0.1", 0.5, 3)
    assert first["status"] == "done"
    assert second["varied"] == "optim.lr=0.2" and second["status"].startswith("failed")
