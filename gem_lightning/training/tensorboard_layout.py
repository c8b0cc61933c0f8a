"""A callback that puts train and validation curves on one TensorBoard chart each.

Separate scalar tags give separate charts, so over-fitting (train loss falling while validation loss
rises) is hard to see. TensorBoard's Custom Scalars dashboard draws several tags on one chart; this
writes that layout once per run.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

OVERFITTING_LAYOUT = {
    "overfitting": {
        "loss: train vs val": ["Multiline", ["train/loss", "val/loss"]],
        "top-1 accuracy: train vs val": ["Multiline", ["train/acc", "val/acc"]],
    }
}


class OverfittingCharts(pl.Callback):
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                logger.experiment.add_custom_scalars(OVERFITTING_LAYOUT)
