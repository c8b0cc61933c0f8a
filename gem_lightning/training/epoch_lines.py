"""One log line per epoch: what a run shows where nobody watches a terminal (nohup, SLURM, CI).

``epoch 3/30: train loss 1.2345 acc 0.6120 | val loss 1.4560 acc 0.5800 best 0.6010 | 41 s, about 18 min left``

Rank 0 writes it, after the epoch's validation, through the ``gem_lightning`` logger: the console and
``train.log``. In a terminal where Lightning's progress bar is live it goes to ``train.log`` only, since a line
written under a live rich bar breaks its redrawing.
"""

from __future__ import annotations

import logging
import sys
import time

import lightning.pytorch as pl

from gem_lightning.progress_bars import duration_words

log = logging.getLogger(__name__)


class EpochLines(pl.Callback):
    """Logs epoch k/N, train and val loss/acc, the best val/acc so far, the epoch's seconds and the time left
    (the mean epoch so far times the epochs left; early stopping may end the run sooner)."""

    def __init__(self) -> None:
        self._epoch_started = 0.0
        self._epoch_seconds: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        # Validation has run inside the epoch, and Lightning has reduced the epoch's train metrics by now.
        self._epoch_seconds.append(time.perf_counter() - self._epoch_started)
        line = self.describe(trainer)
        if _stdout_is_a_terminal() and trainer.progress_bar_callback is not None:
            _to_log_files(log.makeRecord(log.name, logging.INFO, __file__, 0, line, None, None))
        else:
            log.info(line)

    def describe(self, trainer: pl.Trainer) -> str:
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
        epoch = trainer.current_epoch + 1
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        parts = [f"epoch {epoch}/{max_epochs}" if max_epochs else f"epoch {epoch}"]
        for stage in ("train", "val"):
            shown = [f"{key} {metrics[f'{stage}/{key}']:.4f}" for key in ("loss", "acc") if f"{stage}/{key}" in metrics]
            if stage == "val" and "val/acc_best" in metrics:
                shown.append(f"best {metrics['val/acc_best']:.4f}")
            if shown:
                parts.append(f"{stage} {' '.join(shown)}")
        timing = duration_words(self._epoch_seconds[-1])
        if max_epochs and epoch < max_epochs:
            mean = sum(self._epoch_seconds) / len(self._epoch_seconds)
            timing += f", about {duration_words(mean * (max_epochs - epoch))} left"
        return f"{parts[0]}: {' | '.join([*parts[1:], timing])}"


def _stdout_is_a_terminal() -> bool:
    # Under a live rich bar sys.stdout is rich's FileProxy, whose isatty() is always False: ask the file it wraps.
    return getattr(sys.stdout, "rich_proxied_file", sys.stdout).isatty()


def _to_log_files(record: logging.LogRecord) -> None:
    """Hand ``record`` to the file handlers of the loggers it would pass through (Hydra's train.log)."""
    logger: logging.Logger | None = log
    while logger is not None:
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
                handler.handle(record)
        logger = logger.parent if logger.propagate else None
