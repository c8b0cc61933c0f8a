"""The epoch line goes to the console and train.log, and to train.log only under a live progress bar."""

from __future__ import annotations

import io
import logging
import sys

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar
from torch.utils.data import DataLoader, TensorDataset

from gem_lightning.training.epoch_lines import EpochLines


class _TinyClassifier(pl.LightningModule):
    """Logs what the classifier logs (train/loss, train/acc, val/loss, val/acc, val/acc_best) on 8 points."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)

    def _step(self, batch, stage):
        x, y = batch
        logits = self.layer(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True)
        self.log(f"{stage}/acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")
        self.log("val/acc_best", 0.5)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("progress_bar", [False, True])
def test_one_line_an_epoch_to_the_log_file_and_to_the_console_unless_a_bar_is_live(tmp_path, monkeypatch, progress_bar):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # a terminal
    console, log_file = io.StringIO(), tmp_path / "train.log"
    root = logging.getLogger()
    handlers = [logging.StreamHandler(console), logging.FileHandler(log_file)]
    for handler in handlers:
        root.addHandler(handler)
    monkeypatch.setattr(root, "level", logging.INFO)
    data = TensorDataset(torch.randn(8, 2), torch.randint(0, 2, (8,)))
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress_bar,
        callbacks=[EpochLines(), *([RichProgressBar()] if progress_bar else [])],
    )
    try:
        trainer.fit(_TinyClassifier(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
    in_file = [line for line in log_file.read_text().splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in in_file] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "train loss" in in_file[0] and "val loss" in in_file[0] and "best 0.5000" in in_file[0]
    on_console = [line for line in console.getvalue().splitlines() if line.startswith("epoch ")]
    assert on_console == ([] if progress_bar else in_file)
