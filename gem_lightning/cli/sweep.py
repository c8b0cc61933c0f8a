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
import sys
from pathlib import Path

import hydra

from gem_lightning.cli.front_end import run_entry_point
from gem_lightning.config.composition import DEFAULT_CONFIG_DIR, compose_train_config
from gem_lightning.errors import GemLightningError
from gem_lightning.machine.child_processes import die_with_parent
from gem_lightning.machine.garbage_collector import freeze_imported_objects
from gem_lightning.sweeps.plan import SweepPlan
from gem_lightning.sweeps.results import print_results, write_results
from gem_lightning.sweeps.search_space import override_value
from gem_lightning.sweeps.storage import shown

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
    # Set by the launcher for each worker it starts (sweeps.launchers): where it runs, and the CPU cores it may use.
    parser.add_argument("--worker", choices=("local", "slurm"), help=argparse.SUPPRESS)
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
    import torch

    cores = {int(c) for c in cpus.split(",")}
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))


def _warn_if_sqlite(plan: SweepPlan) -> None:
    if plan.storage.drivername.startswith("sqlite"):
        log.warning(
            "sweep/launcher=slurm with the SQLite study %s: fine while every task runs on a node that sees this file "
            "on its own disk; for tasks on several nodes give a database server: --storage postgresql://...",
            shown(plan.storage),
        )


def run(args: argparse.Namespace) -> int:
    # Imported once running: a worker this spawns runs this module again (tests/machine/test_spawned_workers.py).
    from gem_lightning.sweeps import launchers
    from gem_lightning.sweeps.worker import open_plan_study, run_worker
    from gem_lightning.training.run import check_run_settings

    if args.worker == "local":  # one of the processes `--jobs K` started: it ends with its supervisor
        die_with_parent()
    if args.cpus:
        _limit_cpus(args.cpus)
    train_overrides, sweep_overrides = split_overrides(args)
    cfg = compose_train_config(args.config_dir, [*train_overrides, *sweep_overrides])
    freeze_imported_objects()  # composing imported torch and Lightning (machine/garbage_collector.py says why)
    plan = SweepPlan.from_config(cfg, train_overrides, args.config_dir)
    # A missing data folder, weights or model file, a bad optimiser setting or a GPU the machine lacks would
    # fail every trial; say so before the study records any.
    hydra.utils.instantiate(cfg.data).check()
    check_run_settings(cfg)
    jobs = int(cfg.sweep.jobs)
    if jobs < 1:
        raise GemLightningError(f"sweep.jobs={jobs}: use 1 or more workers")
    launcher = cfg.sweep.launcher
    if args.worker is None and (jobs > 1 or launcher.name == "slurm"):
        # The same sweep for each worker, as one worker that runs trials itself (so workers do not start workers).
        # The launcher's settings are the supervisor's: a worker runs where it was started.
        launched = ("sweep.jobs=", "sweep/launcher=", "sweep.launcher.")
        sweep_overrides = [o for o in sweep_overrides if not o.lstrip("+~").startswith(launched)]
        worker_args = [*train_overrides, *sweep_overrides, "sweep.jobs=1", "--config-dir", str(args.config_dir)]
        if launcher.name == "slurm":
            _warn_if_sqlite(plan)
            status = launchers.run_slurm_workers(worker_args, jobs, launcher)
        else:
            status = launchers.run_local_workers(worker_args, jobs)
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
        if args.worker:
            return 0  # one of several workers: the launcher prints the results once
    print_results(plan, write_results(plan, study))
    return 0


def main(argv: list[str] | None = None) -> int:
    # Every worker process runs this too (its own main), so each sets itself up alike.
    interrupted = "interrupted: the running trial is queued again; run the same command to resume"
    return run_entry_point(_parser(), run, argv, intermixed=True, interrupted=interrupted)


if __name__ == "__main__":
    sys.exit(main())
