"""SIGTERM during a sweep trial's Lightning fit, with real signals and a real Optuna study in SQLite: the
interrupt must never be raised inside a call to the study, which could leave the study locked by the process
that has to record the interruption (gem_lightning/machine/interrupts.py)."""

from __future__ import annotations

import os
import random
import signal
import threading
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


class _SigtermAfterFirstReport(Callback):
    """SIGTERM to this process ``delay`` s after the trial's first report, as a scheduler would send it; then
    the files of the frames the interrupt passed through, innermost last."""

    def __init__(self, delay: float) -> None:
        self.sender = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM))
        self.files: list[str] | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self.sender.is_alive() and not self.sender.finished.is_set():
            self.sender.start()

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.files, frame = [], exception.__traceback__
            while frame is not None:
                self.files.append(frame.tb_frame.f_code.co_filename)
                frame = frame.tb_next


def _fit_until_sigterm(study: optuna.Study, delay: float) -> tuple[list[str] | None, int]:
    """One trial's fit (a validation, and so a report to the study, after every training batch), SIGTERMed
    ``delay`` s after its first report; the frames its interrupt passed through (None if it was not
    interrupted) and how many reports the trial made."""
    trial = study.ask()
    # After the pruning callback: Lightning calls callbacks in the order given.
    sigterm = _SigtermAfterFirstReport(delay)
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
        callbacks=[_PruningCallback(trial, monitor="val/loss"), sigterm],
    )
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with _sigterm_as_interrupt():
            trainer.fit(_ValidationLoss())
    except SystemExit:  # how Lightning ends a fit that was interrupted
        pass
    finally:
        if sigterm.sender.is_alive():
            sigterm.sender.join()
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores Ctrl+C once interrupted
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return sigterm.files, len(study.trials[-1].intermediate_values)


def test_sigterm_during_a_trial_never_interrupts_a_call_to_the_study(tmp_path: Path):
    torch.set_num_threads(1)
    storage = open_storage(storage_url(None, tmp_path), heartbeat_interval=1, grace_period=3, max_retry=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(storage=storage, study_name="interrupted")
    rng = random.Random(0)
    fits, reports = 20, 0
    # Without the hold, about one fit in three was interrupted inside SQLAlchemy or Optuna's storage.
    for _ in range(fits):
        files, reported = _fit_until_sigterm(study, rng.uniform(0.0, 0.2))
        assert files is not None, "the fit ended without being interrupted"
        inside = [f for f in files if any(part in f for part in STUDY_CODE)]
        assert not inside, f"SIGTERM was raised inside a call to the study, in {inside[-1]}"
        reports += reported
    assert reports > 2 * fits, f"{reports} reports in {fits} fits: too few for SIGTERM to meet one"
