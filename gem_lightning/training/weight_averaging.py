"""An exponential moving average of the weights (``callbacks=ema``): Lightning's EMAWeightAveraging, made to
hand its average to everything after the fit.
"""

# Lightning's callback validates with the averaged weights and saves them as the checkpoint's ``state_dict``
# (the raw ones go to ``current_model_state``), so best.ckpt holds the average. But when ``trainer.test``
# loads that checkpoint after the fit, the callback still holds its averaged model and loads the *raw* weights
# back into the module: the logged test accuracy would be the raw model's and the evaluation report's (which
# reads ``state_dict``) the average's, two numbers for one checkpoint. Dropping the averaged model when the fit
# ends makes test, report, predict and export all see the weights the checkpoint was chosen for.

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EMAWeightAveraging


class EMAWeights(EMAWeightAveraging):
    """EMAWeightAveraging whose checkpoints, once the fit is over, load as the averaged weights they hold."""

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if stage == "fit":
            self._average_model = None  # on_train_end has copied the average into the module already

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # Outside a fit (test, validate) the module has loaded the averaged state_dict already, which is the
        # point; Lightning would warn that the averaging state cannot be restored there.
        if self._average_model is not None:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
