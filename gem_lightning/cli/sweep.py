"""``python sweep.py``: an Optuna search over train.py runs (see README.md, "Optuna sweeps")."""

#     python sweep.py experiment=demo --n-trials 12          # conf/sweep/default.yaml, a SQLite study
#     python sweep.py sweep=backbones sweep/pruner=hyperband --n-trials 40 trainer.gpus=1 --jobs 2
#     python sweep.py --storage postgresql://user:pw@db-host/optuna --study-name gems --n-trials 200
#
# Every other argument is a train.py override (or a ``sweep.*`` / ``sweep/pruner=`` override of the sweep's
# own settings). ``--n-trials N`` is the number of finished trials (complete or pruned) the *study* should end
# with, counting every worker and every earlier run: running the same command again after a crash (or on a
# second machine) continues towards the same N, and a worker whose study already has N finished trials
# just prints the results. ``--jobs K`` runs K workers side by side on this machine (sharing its GPU).

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import hydra
import torch

from gem_lightning.cli.front_end import run_entry_point
from gem_lightning.config.composition import DEFAULT_CONFIG_DIR, compose_train_config
from gem_lightning.config.schema import PROJECT_ROOT
from gem_lightning.errors import GemLightningError
from gem_lightning.machine import auto_settings
from gem_lightning.machine.child_processes import die_with_parent
from gem_lightning.sweeps.plan import SweepPlan
from gem_lightning.sweeps.results import print_results, write_results
from gem_lightning.sweeps.search_space import override_value
from gem_lightning.sweeps.storage import shown
from gem_lightning.sweeps.worker import open_plan_study, run_worker
from gem_lightning.training.run import check_run_settings

log = logging.getLogger(__name__)

DEFAULT_SWEEP = "default"
# Flags that are shortcuts for sweep.* keys, so the file and the command line cannot disagree.
FLAG_KEYS = {"n_trials": "sweep.n_trials", "storage": "sweep.storage", "study_name": "sweep.study_name"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python sweep.py",
        description="Optuna sweep over train.py runs: TPE sampling, pruning, resumable and shareable studies.",
        epilog="Other arguments are train.py overrides; sweep=<name> picks conf/sweep/<name>.yaml (default).",
    )
    parser.add_argument("overrides", nargs="*", help="train.py overrides, sweep=<name>, sweep.<key>=<value>")
    parser.add_argument(
        "--n-trials",
        type=int,
        help="finished (complete + pruned) trials the study should end with, over all workers and earlier runs "
        "(default: sweep.n_trials)",
    )
    parser.add_argument("--jobs", type=int, default=None, help="workers side by side on this machine (sweep.jobs)")
    parser.add_argument("--storage", help="database URL shared by workers on many machines (default: SQLite file)")
    parser.add_argument("--study-name", help="the study's name and folder under outputs/sweeps/ (sweep.study_name)")
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, help="Hydra config folder")
    # Set by the --jobs supervisor for each worker it starts: the CPU cores that worker may use.
    parser.add_argument("--cpus", help=argparse.SUPPRESS)
    return parser


def _is_sweep_override(text: str) -> bool:
    key = text.lstrip("+~").split("=", 1)[0]
    return key == "sweep" or key.startswith(("sweep.", "sweep/"))


def split_overrides(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(train.py overrides for every trial, overrides of the sweep's own settings)."""
    train_overrides = [o for o in args.overrides if not _is_sweep_override(o)]
    sweep_overrides = [o for o in args.overrides if _is_sweep_override(o)]
    if not any(o.lstrip("+").startswith("sweep=") for o in sweep_overrides):
        sweep_overrides.insert(0, f"sweep={DEFAULT_SWEEP}")
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            sweep_overrides.append(f"{key}={override_value(value)}")
    if args.jobs is not None:
        sweep_overrides.append(f"sweep.jobs={args.jobs}")
    return train_overrides, sweep_overrides


def _limit_cpus(cpus: str) -> None:
    """Confine this worker to its share of the cores, so K workers do not each start a thread per core."""
    cores = {int(c) for c in cpus.split(",")}
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))


def run_jobs(worker_args: list[str], jobs: int) -> int:
    """Start ``jobs`` workers of this same sweep (one process each) and wait for all of them.

    Trials run side by side: on a GPU machine they share the device the trainer settings name; each worker
    gets its own share of the CPU cores. Ctrl+C or SIGTERM reaches every worker, which records its trial as
    interrupted (queued again), so the same command resumes the sweep.
    """
    workers = []
    for cpus in auto_settings.core_shares(jobs):
        command = [sys.executable, "-m", "gem_lightning.cli.sweep", *worker_args]
        if cpus is not None:
            command += ["--cpus", cpus]
        # The workers import this checkout's package wherever the user started the sweep from.
        path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        workers.append(subprocess.Popen(command, env={**os.environ, "PYTHONPATH": path}))

    def forward(signum, frame) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    # Ctrl+C in a terminal reaches every process of the group, the workers included; forwarding it would
    # interrupt them twice. The supervisor just waits for them to record their trials and stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return max(worker.wait() for worker in workers)


def run(args: argparse.Namespace) -> int:
    if args.cpus:  # one of the workers `--jobs K` started: it ends with its supervisor
        die_with_parent()
        _limit_cpus(args.cpus)
    train_overrides, sweep_overrides = split_overrides(args)
    cfg = compose_train_config(args.config_dir, [*train_overrides, *sweep_overrides])
    plan = SweepPlan.from_config(cfg, train_overrides, args.config_dir)
    # A missing data folder, weights or model file, a bad optimiser setting or a GPU the machine lacks would
    # fail every trial; say so before the study records any.
    hydra.utils.instantiate(cfg.data).check()
    check_run_settings(cfg)
    jobs = int(cfg.sweep.jobs)
    if jobs < 1:
        raise GemLightningError(f"sweep.jobs={jobs}: use 1 or more workers")
    if jobs > 1:
        # The same sweep for each worker, as one worker each (so workers do not start workers).
        sweep_overrides = [o for o in sweep_overrides if not o.startswith("sweep.jobs=")]
        worker_args = [*train_overrides, *sweep_overrides, "sweep.jobs=1", "--config-dir", str(args.config_dir)]
        status = run_jobs(worker_args, jobs)
        if status != 0:
            return status
        _, study = open_plan_study(plan)
    else:
        log.info(
            "study %s in %s: running trials until it has %d finished ones (complete or pruned), counting every "
            "worker; trial folders in %s",
            plan.study_name,
            shown(plan.storage),
            plan.n_trials,
            plan.sweep_dir / "trials",
        )
        storage, study = open_plan_study(plan)
        log.info("this worker ran %d trial(s)", run_worker(plan, storage, study))
        if args.cpus:
            return 0  # one of several workers: the supervisor prints the results once
    print_results(plan, write_results(plan, study))
    return 0


def main(argv: list[str] | None = None) -> int:
    # Every worker process runs this too (its own main), so each sets itself up alike.
    interrupted = "interrupted: the running trial is queued again; run the same command to resume"
    return run_entry_point(_parser(), run, argv, intermixed=True, interrupted=interrupted)


if __name__ == "__main__":
    sys.exit(main())
