"""SIGTERM during a sweep trial's Lightning fit, with real signals and a real Optuna study in SQLite: the
interrupt must never be raised inside a call to the study, which could leave the study locked by the process
that has to record the interruption (gem_lightning/machine/interrupts.py)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import warnings
from pathlib import Path

import optuna
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from gem_lightning.sweeps.storage import open_storage, storage_url
from gem_lightning.sweeps.worker import _PruningCallback, _sigterm_as_interrupt

STUDY_CODE = (f"{os.sep}sqlalchemy{os.sep}", f"{os.sep}optuna{os.sep}storages{os.sep}")


class _ValidationLoss(BoringModel):
    """Lightning's boring model, logging the value the pruning callback reports."""

    def validation_step(self, batch, batch_idx):
        loss = self.step(batch)
        self.log("val/loss", loss)
        return {"x": loss}


class _WhereInterrupted(Callback):
    """The files of the frames the interrupt passed through, innermost last."""

    files: list[str] | None = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.files, frame = [], exception.__traceback__
            while frame is not None:
                self.files.append(frame.tb_frame.f_code.co_filename)
                frame = frame.tb_next


def _fit_until_sigterm(study: optuna.Study, delay: float) -> list[str] | None:
    """One trial's fit (a validation, and so a report to the study, after every training batch), SIGTERMed after
    ``delay`` s as a scheduler would; the frames its interrupt passed through, None if it was not interrupted."""
    trial = study.ask()
    where = _WhereInterrupted()
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=10_000,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_PruningCallback(trial, monitor="val/loss"), where],
    )
    model = _ValidationLoss()
    sender = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM))
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with _sigterm_as_interrupt():
            sender.start()
            trainer.fit(model)
    except SystemExit:  # how Lightning ends a fit that was interrupted
        pass
    finally:
        sender.join()
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores Ctrl+C once interrupted
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return where.files


def test_sigterm_during_a_trial_never_interrupts_a_call_to_the_study(tmp_path: Path):
    torch.set_num_threads(1)
    storage = open_storage(storage_url(None, tmp_path), heartbeat_interval=1, grace_period=3, max_retry=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(storage=storage, study_name="interrupted")
    rng = random.Random(0)
    reports, interrupted = 0, 0
    deadline = time.monotonic() + 60
    # Without the hold, about one fit in three was interrupted inside SQLAlchemy or Optuna's storage.
    while interrupted < 20 and time.monotonic() < deadline:
        files = _fit_until_sigterm(study, rng.uniform(0.1, 0.4))
        reports += len(study.trials[-1].intermediate_values)
        if files is None:
            continue
        interrupted += 1
        inside = [f for f in files if any(part in f for part in STUDY_CODE)]
        assert not inside, f"SIGTERM was raised inside a call to the study, in {inside[-1]}"
    assert interrupted >= 10 and reports >= 3 * interrupted, (interrupted, reports)
