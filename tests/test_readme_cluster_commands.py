"""README.md's commands on a SLURM cluster (a single-node cluster the tests start): multirun jobs, a
data-parallel job and Optuna workers as a job array; each run as a user types it, in a fresh clone of this
working tree (``tests/helpers/readme_commands.py``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.postgres_server import find_postgres_bin, postgres_server
from tests.helpers.readme_commands import (
    DDP_SHRINK,
    SMALL_DEMO,
    _report_top1,
    _value,
    check_every_command_of_the_module_ran,
)
from tests.helpers.slurm_cluster import find_slurm, slurm_cluster

# -- on a SLURM cluster -------------------------------------------------------------------------------------

# Each job: one epoch of 12 demo photos a class at 32 px; augmented in the main process, so that a job's random
# crops do not depend on how many loader processes its cores allow.
# No calibration, report or label audit in these jobs: what they check is where jobs run and what they train
# (about 4 s a job here, 8 jobs in test_multirun_on_slurm alone).
CLUSTER_SHRINK = (
    SMALL_DEMO,
    "data.image_size=32",
    "trainer.max_epochs=1",
    "data.num_workers=0",
    "evaluate=false",
    "label_audit=none",
)
needs_slurm = pytest.mark.skipif(
    find_slurm() is not None and not os.environ.get("CI"),
    reason=f"SLURM is not installed ({find_slurm()} missing; Debian: apt-get install slurm-wlm munge; CI installs it)",
)


@pytest.fixture(scope="module")
def slurm() -> dict[str, str]:
    """A single-node SLURM cluster for this module's tests: the one variable that points its clients at it."""
    with slurm_cluster() as env:
        yield {"SLURM_CONF": env["SLURM_CONF"]}


# The keys test_multirun_on_slurm's jobs differ by.
SWEPT_KEYS = ("optim.lr=", "augment=")


def _multirun_metrics(output: str, root: Path) -> dict[str, dict]:
    """Each job's metrics.json (seconds left out), by its swept overrides, from a multirun's summary.csv."""
    import csv

    summary = root / _value(output, "summary")
    jobs = {}
    for row in csv.DictReader(summary.open()):
        recorded = json.loads((root / row["run_dir"] / "metrics.json").read_text())
        swept = " ".join(sorted(o for o in row["overrides"].split() if o.startswith(SWEPT_KEYS)))
        jobs[swept] = {"metrics": recorded["metrics"], "epochs": recorded["epochs"], "run_dir": root / row["run_dir"]}
    return jobs


@needs_slurm
def test_multirun_on_slurm(small_demo_clone, slurm):
    clone = small_demo_clone
    command = (
        "python train.py -m hydra/launcher=submitit_slurm experiment=demo optim.lr=1e-3,3e-4 "
        "augment=seed,colour_preserving"
    )
    on_slurm = clone.run(command, *CLUSTER_SHRINK, env=slurm)
    assert on_slurm.returncode == 0, on_slurm.stderr[-3000:]
    sweep_dir = (clone.root / _value(on_slurm.stdout, "summary")).parent
    # submitit's folder per job: <array id>_<index>, each with the job's output.
    submitted = [job for job in (sweep_dir / ".submitit").iterdir() if re.fullmatch(r"\d+_\d", job.name)]
    assert len(submitted) == 4 and all(list(job.glob("*_log.out")) for job in submitted)  # 4 SLURM jobs ran
    slurm_jobs = _multirun_metrics(on_slurm.stdout, clone.root)
    assert len(slurm_jobs) == 4 and len({json.dumps(job["metrics"]) for job in slurm_jobs.values()}) == 4
    # Two of the jobs again as local processes (README: hydra/launcher=submitit_local), one thread a job as SLURM
    # gives a job of one core: the same numbers, each under its own settings (both learning rates, one policy).
    # Hydra's basic launcher runs all four in test_multirun.
    local = command.replace("hydra/launcher=submitit_slurm", "hydra/launcher=submitit_local")
    local = local.replace("augment=seed,colour_preserving", "augment=colour_preserving")
    here = clone.run(local, *CLUSTER_SHRINK, env={"OMP_NUM_THREADS": "1"})
    assert here.returncode == 0, here.stderr[-3000:]
    local_jobs = _multirun_metrics(here.stdout, clone.root)
    assert len(local_jobs) == 2 and set(local_jobs) < set(slurm_jobs)
    for swept, job in local_jobs.items():
        assert job["metrics"] == pytest.approx(slurm_jobs[swept]["metrics"], abs=1e-5), swept


@needs_slurm
def test_data_parallel_on_slurm(small_demo_clone, slurm):
    clone = small_demo_clone
    result = clone.run(
        "python train.py -m hydra/launcher=submitit_slurm hydra.launcher.tasks_per_node=2 trainer=ddp_cpu "
        "experiment=demo",
        *DDP_SHRINK[:-1], "trainer.max_epochs=2", "data.num_workers=0",
        env=slurm,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = (clone.root / _value(result.stdout, "summary")).parent
    (job,) = [job for job in (sweep_dir / ".submitit").iterdir() if job.name.isdigit()]  # one SLURM job...
    logs = sorted(job.glob("*_log.err"))
    assert len(logs) == 2  # ...of two tasks, the two processes of one run
    for rank, log in enumerate(logs):
        assert f"Initializing distributed: GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in log.read_text()
    (run,) = _multirun_metrics(result.stdout, clone.root).values()
    assert run["epochs"] == 2 and "test/ece_calibrated" in run["metrics"]
    assert run["metrics"]["test/acc"] == pytest.approx(_report_top1(run["run_dir"]), abs=1e-6)


requires_postgres = pytest.mark.skipif(
    find_postgres_bin() is None and not os.environ.get("CI"),
    reason="PostgreSQL's initdb/pg_ctl are not installed (Debian: apt-get install postgresql; CI installs it)",
)


@needs_slurm
@requires_postgres
def test_sweep_workers_as_a_slurm_array(small_demo_clone, slurm):
    clone = small_demo_clone
    import optuna

    from gem_lightning.sweeps.storage import storage_url

    with postgres_server() as url:
        result = clone.run(
            "python sweep.py experiment=demo --n-trials 20 --jobs 4 sweep/launcher=slurm "
            "--storage postgresql://user:password@db-host/optuna",
            *CLUSTER_SHRINK, "--n-trials", "4", "--jobs", "2", "--study-name", "on-slurm",
            placeholders={"postgresql://user:password@db-host/optuna": url},
            env=slurm,
        )  # fmt: skip
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-3000:]
        study = optuna.load_study(study_name="on-slurm", storage=str(storage_url(url, clone.root)))
        trials = study.trials  # read while the server runs
    assert "2 workers submitted as SLURM job array" in output and "finished trials: 4 of 4" in output
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    tasks = sorted((clone.root / "outputs" / "sweeps" / "on-slurm" / "slurm").glob("*_log.err"))  # the logs
    assert len(tasks) == 2  # one array, two tasks
    ran = [int(re.search(r"this worker ran (\d+) trial", task.read_text()).group(1)) for task in tasks]
    assert sum(ran) == 4, ran
    assert len({t.user_attrs["worker"] for t in trials}) == sum(n > 0 for n in ran)


@needs_slurm
@requires_postgres
def test_sigterm_to_a_slurm_sweep_cancels_its_array_and_the_sweep_resumes(small_demo_clone, slurm):
    clone = small_demo_clone
    import optuna
    from optuna.trial import TrialState

    from gem_lightning.sweeps.storage import storage_url

    command = (
        "python sweep.py experiment=demo --n-trials 20 --jobs 4 sweep/launcher=slurm "
        "--storage postgresql://user:password@db-host/optuna"
    )
    # As many trials as array tasks, each normally cancelled mid-training: the rerun trains only their retries.
    shrink = (*CLUSTER_SHRINK, "trainer.max_epochs=8", "--n-trials", "2", "--jobs", "2", "--study-name", "cancelled")
    with postgres_server() as url:
        placeholders = {"postgresql://user:password@db-host/optuna": url}
        storage = str(storage_url(url, clone.root))
        supervisor = clone.start(command, *shrink, placeholders=placeholders, env=slurm)
        deadline = time.monotonic() + 300
        while True:  # both array tasks in the middle of a trial
            assert supervisor.poll() is None and time.monotonic() < deadline, supervisor.communicate()[0][-3000:]
            try:
                trials = optuna.load_study(study_name="cancelled", storage=storage).trials
            except KeyError:  # not created yet
                trials = []
            running = [t for t in trials if t.state == TrialState.RUNNING]
            if len(running) == 2 and all(t.intermediate_values for t in running):
                break
            time.sleep(0.5)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=120) != 0
        deadline = time.monotonic() + 60
        while _slurm_jobs(slurm) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _slurm_jobs(slurm), "the array's tasks outlived the sweep that submitted them"
        trials = optuna.load_study(study_name="cancelled", storage=storage).trials
        states = [(t.number, t.state.name, t.user_attrs.get("failed")) for t in trials]
        # Every trial recorded by its worker before SLURM's KillWait ran out: none left running. A trial may
        # finish in the seconds that cancelling the array takes (on a loaded machine, where one of its epochs
        # took seconds, it need not be the last); every other one is interrupted and queued again.
        assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING) for t in trials), states
        interrupted = [t for t in trials if t.state == TrialState.FAIL]
        assert interrupted and all("interrupted" in t.user_attrs["failed"] for t in interrupted), states
        assert sum(t.state == TrialState.WAITING for t in trials) == len(interrupted), states

        again = clone.run(command, *shrink, placeholders=placeholders, env=slurm)  # the same command resumes
        assert again.returncode == 0, again.stderr[-3000:]
        trials = optuna.load_study(study_name="cancelled", storage=storage).trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert {t.system_attrs.get("failed_trial") for t in trials} - {None} == {t.number for t in interrupted}


def _slurm_jobs(slurm: dict[str, str]) -> list[str]:
    listed = subprocess.run(
        ["squeue", "-h", "-o", "%i %T"], env={**os.environ, **slurm}, capture_output=True, text=True
    )
    return listed.stdout.split("\n")[:-1]


# -- last: every README command of this module ran -----------------------------------------------------------


def test_every_readme_command_ran(request):
    """Runs last (file order): each README command whose test is in this module was run by it, as shown."""
    check_every_command_of_the_module_ran(request)
