"""One sweep worker: take trials from the study until it has ``n_trials`` finished ones, and run each as train.py."""

# A trial composes train.yaml with the command line's overrides plus its sampled values (Hydra's compose
# API, as ``train.py`` does), trains in ``<sweep dir>/trials/<number>/`` with Optuna's Lightning pruning
# callback reporting ``val/acc`` after every epoch, and tells the study its ``val/acc_best``.
#
# What can happen to a trial, and what the study records:
# - finished: COMPLETE with its value; pruned by the pruner: PRUNED (both count towards ``n_trials``);
# - the same parameters as a finished trial (a small categorical space): that trial's outcome, not trained again;
# - out of GPU memory (a sampled batch size too big): FAIL with the reason, and the sweep goes on;
# - interrupted (Ctrl+C, SIGTERM) or its worker killed: FAIL, queued again with the same parameters; the retry
#   resumes from the interrupted attempt's ``last.ckpt``, so running the same command again continues it.

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import torch
from omegaconf import OmegaConf
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from optuna_integration.pytorch_lightning import PyTorchLightningPruningCallback

from gem_lightning.config.composition import compose_train_config
from gem_lightning.errors import GemLightningError
from gem_lightning.files.atomic_writes import write_text_atomically
from gem_lightning.machine.interrupts import interrupts_held
from gem_lightning.sweeps.plan import SweepPlan
from gem_lightning.sweeps.search_space import as_overrides
from gem_lightning.sweeps.storage import (
    load_study,
    one_worker_at_a_time,
    open_storage,
    quiet_experimental,
    retry_callback,
)
from gem_lightning.training.run import train

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def open_plan_study(plan: SweepPlan) -> tuple[RDBStorage, optuna.Study]:
    with one_worker_at_a_time(plan.storage):
        storage = open_storage(plan.storage, plan.heartbeat_interval, plan.grace_period, plan.max_retry)
        study = load_study(storage, plan.study_name, plan.direction, plan.identity(), plan.make_pruner())
    return storage, study


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_worker(plan: SweepPlan, storage: RDBStorage, study: optuna.Study) -> int:
    """Run trials until the study has ``plan.n_trials`` finished ones (complete or pruned), counting all
    workers; returns how many this worker ran."""
    # Optuna warns on ask/tell with a heartbeat storage because only optimize() beats; _heartbeat() beats here.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used", category=UserWarning)
    with _sigterm_as_interrupt():
        return _take_trials(plan, storage, study)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While trials run, SIGTERM (a scheduler, `kill`, the --jobs supervisor) ends the trial as Ctrl+C does:
    recorded as interrupted and queued again. Elsewhere than the main thread nothing is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _PruningCallback(PyTorchLightningPruningCallback):
    """Optuna's pruning callback, whose study calls (report, should_prune) wait out Ctrl+C and SIGTERM: an
    interrupt inside one could leave the study locked by this very process (machine/interrupts.py)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        with interrupts_held():
            super().on_fit_start(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        with interrupts_held():
            super().on_validation_end(trainer, pl_module)


def _take_trials(plan: SweepPlan, storage: RDBStorage, study: optuna.Study) -> int:
    trials_run, waiting = 0, False
    while True:
        with interrupts_held(), one_worker_at_a_time(plan.storage):
            with quiet_experimental():
                optuna.storages.fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            running = [t.number for t in trials if t.state == TrialState.RUNNING]
            trial = None
            if finished < plan.n_trials and finished + len(running) < plan.n_trials:
                study.sampler = plan.make_sampler(len(trials))
                trial = study.ask()
                # At once: a trial without any heartbeat is never considered stale, so one whose worker
                # died before its first beat would hold its place in the budget for ever.
                storage.record_heartbeat(trial._trial_id)
        if finished >= plan.n_trials:
            return trials_run
        if trial is None:
            # The rest of the budget is running elsewhere; it either finishes or, if its worker died, goes
            # stale after grace_period and is queued again. Wait and look again.
            if not waiting:
                waiting = True
                log.info(
                    "study %s: %d of %d trials finished, %s running; waiting for them (a dead worker's trial "
                    "is retried after %d s without a heartbeat)",
                    plan.study_name,
                    finished,
                    plan.n_trials,
                    ", ".join(f"#{n}" for n in running),
                    plan.grace_period,
                )
            time.sleep(min(5.0, plan.heartbeat_interval))
            continue
        waiting = False
        run_trial(plan, storage, study, trial)
        trials_run += 1


@contextmanager
def _heartbeat(storage: RDBStorage, trial: optuna.Trial, interval: int) -> Iterator[None]:
    """Tell the study this trial is alive, every ``interval`` seconds, until the block ends."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial._trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-trial-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _frozen(study: optuna.Study, number: int) -> FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _finished_twin(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial | None:
    """A finished trial with exactly these parameters: running it again would only repeat it."""
    for other in study.get_trials(deepcopy=False, states=FINISHED):
        if other.number != trial.number and other.params == trial.params:
            return other
    return None


def _checkpoint_to_resume(trial: optuna.Trial) -> Path | None:
    """The interrupted attempt's ``last.ckpt``, when this trial is a retry of one (its user attrs are copied)."""
    if RetryHeartbeatStaleTrialCallback.retried_trial_number(_frozen(trial.study, trial.number)) is None:
        return None
    previous = trial.user_attrs.get("run_dir")
    checkpoint = Path(previous) / "checkpoints" / "last.ckpt" if previous else None
    return checkpoint if checkpoint is not None and checkpoint.is_file() else None


def _write_run_record(trial_dir: Path, cfg, overrides: list[str]) -> None:
    """What Hydra leaves in a run folder, so a trial folder reads like any train.py run's."""
    settings = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    write_text_atomically(trial_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(settings))
    write_text_atomically(trial_dir / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))


def run_trial(plan: SweepPlan, storage: RDBStorage, study: optuna.Study, trial: optuna.Trial) -> None:
    """Train one trial and tell the study its outcome. Ctrl+C and SIGTERM interrupt the training only: every
    call to the study waits for them to take effect after it (machine/interrupts.py says why)."""
    number = trial.number
    with interrupts_held():
        started_trial = _start_trial(plan, study, trial)
    if started_trial is None:
        return
    run_overrides, sampled = started_trial
    trial_dir = plan.trial_dir(number)
    started = time.perf_counter()
    with _heartbeat(storage, trial, plan.heartbeat_interval):
        try:
            cfg = compose_train_config(plan.config_dir, run_overrides)
            _write_run_record(trial_dir, cfg, run_overrides)
            result = train(cfg, extra_callbacks=[_PruningCallback(trial, monitor=plan.prune_on)])
        except optuna.TrialPruned as pruned:
            with interrupts_held():
                trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
                study.tell(trial, state=TrialState.PRUNED)
                log.info("trial %d pruned: %s", number, pruned)
                if plan.keep_checkpoints == "best":
                    remove_unneeded_checkpoints(plan, study)
            return
        except torch.OutOfMemoryError as error:
            with interrupts_held():
                trial.set_user_attr("failed", f"out of memory: {str(error).splitlines()[0]}")
                study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d ran out of memory (%s); the sweep goes on", number, sampled)
            return
        except (KeyboardInterrupt, SystemExit):
            with interrupts_held(), quiet_experimental():
                trial.set_user_attr("failed", "interrupted; queued again with the same parameters")
                study.tell(trial, state=TrialState.FAIL)
                retry_callback(plan.max_retry)(study, _frozen(study, number))
            # Lightning turns Ctrl+C into SystemExit(1); the command line reports every interruption alike.
            raise KeyboardInterrupt(f"trial {number} interrupted") from None
        except BaseException as error:
            with interrupts_held():
                trial.set_user_attr("failed", f"{type(error).__name__}: {error}"[:500])
                study.tell(trial, state=TrialState.FAIL)
            raise

    with interrupts_held():
        metrics = result.metrics
        if plan.metric not in metrics:
            study.tell(trial, state=TrialState.FAIL)
            raise GemLightningError(
                f"sweep.metric={plan.metric} was not logged by the trial; it logged {', '.join(sorted(metrics))}"
            )
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        trial.set_user_attr("best_checkpoint", result.best_checkpoint)
        study.tell(trial, metrics[plan.metric])
        if plan.keep_checkpoints == "best":
            remove_unneeded_checkpoints(plan, study)


def _start_trial(plan: SweepPlan, study: optuna.Study, trial: optuna.Trial) -> tuple[list[str], str] | None:
    """Sample the trial's parameters and record where it runs. Returns its train.py overrides and its sampled
    values as overrides, or None when a finished trial had the same parameters (its outcome is recorded for
    this one, and nothing is trained)."""
    number = trial.number
    with quiet_experimental():
        resume_from = _checkpoint_to_resume(trial)
    trial_dir = plan.trial_dir(number)
    trial.set_user_attr("run_dir", str(trial_dir.resolve()))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    params = plan.space.sample(trial)

    twin = _finished_twin(study, trial)
    if twin is not None:
        # Small categorical spaces run out; a repeat would cost a whole training run to learn nothing.
        log.info("trial %d repeats trial %d's parameters: its outcome is recorded, no training", number, twin.number)
        trial.set_user_attr("repeat_of", twin.number)
        if twin.state == TrialState.COMPLETE:
            study.tell(trial, twin.value)
        else:
            study.tell(trial, state=TrialState.PRUNED)
        return None

    overrides = [*plan.base_overrides, *as_overrides(plan.space.fixed), *plan.trial_overrides, *as_overrides(params)]
    run_overrides = [*overrides, f"paths.output_dir={trial_dir.resolve()}"]
    if resume_from is not None:
        log.info("trial %d resumes its interrupted attempt from %s", number, resume_from)
        run_overrides.append(f"ckpt_path={resume_from}")
    sampled = " ".join(as_overrides(params))
    log.info("trial %d: %s", number, sampled)
    return run_overrides, sampled


def remove_unneeded_checkpoints(plan: SweepPlan, study: optuna.Study) -> None:
    """Keep the best trial's checkpoints; a 50-trial ResNet-18 sweep would otherwise keep ~4.5 GB of them.

    Only finished trials lose theirs (and interrupted attempts whose retry has finished): running trials
    need theirs, and an interrupted attempt's last.ckpt is what its retry resumes from. A best trial that
    resumed an interrupted attempt keeps that attempt's too: its best epoch may have been saved there.
    """
    try:
        best = study.best_trial
    except ValueError:
        return
    finished = study.get_trials(deepcopy=False, states=FINISHED)
    done = {t.number for t in finished} | {n for t in finished for n in t.system_attrs.get("retry_history", [])}
    for number in done - {best.number, *best.system_attrs.get("retry_history", [])}:
        shutil.rmtree(plan.trial_dir(number) / "checkpoints", ignore_errors=True)
