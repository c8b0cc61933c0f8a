"""Where a sweep's workers run (``sweep/launcher``): ``sweep.jobs`` processes on this machine, or as many tasks of
one SLURM job array, submitted through submitit. Either way each worker is the same command, ``python -m
gem_lightning.cli.sweep <the sweep's arguments>``, and the workers share the study's storage; the functions here
start them, wait for all, and return the worst exit status."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gem_lightning.config.project_folder import PROJECT_ROOT
from gem_lightning.errors import GemLightningError
from gem_lightning.machine import auto_settings

log = logging.getLogger(__name__)

# sweep/launcher=slurm's keys (those of hydra/launcher=submitit_slurm) -> submitit.AutoExecutor's parameters.
SUBMITIT_PARAMETERS = {
    "partition": "slurm_partition",
    "timeout_min": "timeout_min",
    "cpus_per_task": "cpus_per_task",
    "gpus_per_node": "gpus_per_node",
    "mem_gb": "mem_gb",
    "additional_parameters": "slurm_additional_parameters",
}


def _worker_command(worker_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "gem_lightning.cli.sweep", *worker_args]


def _worker_environment() -> dict[str, str]:
    """The environment, plus this checkout on PYTHONPATH: workers import it wherever the sweep was started."""
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def run_local_workers(worker_args: list[str], jobs: int) -> int:
    """Start ``jobs`` workers (one process each) and wait for all of them.

    On a GPU machine they share the device the trainer settings name; each gets its own share of the CPU cores
    (``--cpus``). Ctrl+C or SIGTERM reaches every worker, which records its trial as interrupted (queued
    again), so the same command resumes the sweep.
    """
    workers = []
    for cpus in auto_settings.core_shares(jobs):
        command = [*_worker_command(worker_args), "--worker", "local"]
        if cpus is not None:
            command += ["--cpus", cpus]
        workers.append(subprocess.Popen(command, env=_worker_environment()))

    def forward(signum, frame) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    # Ctrl+C in a terminal reaches every process of the group, the workers included; forwarding it would
    # interrupt them twice. The supervisor just waits for them to record their trials and stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return max(worker.wait() for worker in workers)


def run_slurm_workers(worker_args: list[str], jobs: int, settings: DictConfig) -> int:
    """Submit ``jobs`` workers as one SLURM job array and wait for all of them.

    Ctrl+C or SIGTERM cancels the array: SLURM sends each running worker SIGTERM, which records its trial as
    interrupted, so the same command resumes the sweep. Each task's output is in ``settings.folder``.
    """
    try:
        import submitit  # the [cluster] extra: only a SLURM sweep needs it
    except ImportError:
        raise GemLightningError(
            'sweep/launcher=slurm submits through submitit, which is not installed: pip install -e ".[cluster]"'
        ) from None
    folder = Path(settings.folder)
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    chosen = OmegaConf.to_container(settings, resolve=True)
    # null (or an empty mapping) leaves the setting to the cluster's default.
    parameters = {
        SUBMITIT_PARAMETERS[k]: v for k, v in chosen.items() if k in SUBMITIT_PARAMETERS and v not in (None, {})
    }
    executor.update_parameters(name="gem-sweep", slurm_array_parallelism=jobs, **parameters)
    command = submitit.helpers.CommandFunction(
        [*_worker_command(worker_args), "--worker", "slurm"], env=_worker_environment()
    )
    with executor.batch():  # one array of `jobs` tasks, not `jobs` separate jobs
        array = [executor.submit(command) for _ in range(jobs)]
    log.info(
        "%d workers submitted as SLURM job array %s; their output: %s", jobs, array[0].job_id.split("_")[0], folder
    )

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        return max(_status(task) for task in array)
    except KeyboardInterrupt:
        for task in array:
            task.cancel(check=False)
        raise


def _status(task) -> int:
    """0 once a worker's task finished well; 1, logged with where its output is, when it failed."""
    import submitit

    try:
        task.result()
        return 0
    except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as error:
        last_line = str(error).strip().splitlines()[-1:] or ["(no output)"]
        log.error("SLURM task %s failed (%s); its output: %s", task.job_id, last_line[0], task.paths.stdout)
        return 1
