"""The epoch line goes to the console and train.log, and to train.log only under a live progress bar."""

from __future__ import annotations

import io
import logging
import sys

import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar
from torch.utils.data import DataLoader, TensorDataset

from gem_lightning.training.epoch_lines import EpochLines
from tests.helpers.configs import bare_trainer, composed_model


@pytest.mark.parametrize("progress_bar", [False, True])
def test_one_line_an_epoch_to_the_log_file_and_to_the_console_unless_a_bar_is_live(tmp_path, monkeypatch, progress_bar):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # a terminal
    console, log_file = io.StringIO(), tmp_path / "train.log"
    root = logging.getLogger()
    handlers = [logging.StreamHandler(console), logging.FileHandler(log_file)]
    for handler in handlers:
        root.addHandler(handler)
    # setLevel, not the attribute: it also clears the loggers' cached answers to "is INFO on?", which an earlier
    # test in this process may have left at no (under pytest-xdist the line then never reached the file).
    level = root.level
    root.setLevel(logging.INFO)
    # The project's classifier (ResNet-18 at 32 px, no pretrained weights) on 8 random photos of 2 classes.
    model = composed_model(["a", "b"], tmp_path, ["data.image_size=32"])
    data = TensorDataset(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.arange(8) % 2)
    trainer = bare_trainer(
        tmp_path,
        max_epochs=3,
        enable_progress_bar=progress_bar,
        callbacks=[EpochLines(), *([RichProgressBar()] if progress_bar else [])],
    )
    try:
        trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    finally:
        root.setLevel(level)
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
    in_file = [line for line in log_file.read_text().splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in in_file] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "train loss" in in_file[0] and "val loss" in in_file[0] and " best " in in_file[0]
    on_console = [line for line in console.getvalue().splitlines() if line.startswith("epoch ")]
    assert on_console == ([] if progress_bar else in_file)
