"""The logged metrics equal the same metrics computed independently on the same predictions."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from tests.helpers.configs import bare_trainer, composed_model

NUM_CLASSES = 87


def _noisy_prototypes(count: int, prototypes: torch.Tensor, generator: torch.Generator) -> TensorDataset:
    # Sorted labels, as a validation split listed class by class: the first batch then holds few classes.
    labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator).sort().values
    noise = torch.randint(-250, 250, (count, 3, 32, 32), generator=generator)
    images = (prototypes[labels].int() + noise).clamp(0, 255).to(torch.uint8)
    return TensorDataset(images, labels)


def test_logged_validation_metrics_match_an_independent_computation(tmp_path):
    # torchmetrics' MetricCollection "compute groups" merged top-5 accuracy and macro F1 after a first
    # batch like this one, and the logged F1 silently became a copy of top-5 accuracy (seen on Kaggle data).
    pl.seed_everything(0)
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.randint(0, 256, (NUM_CLASSES, 3, 32, 32), dtype=torch.uint8, generator=generator)
    train_set = _noisy_prototypes(960, prototypes, generator)
    val_set = _noisy_prototypes(432, prototypes, generator)
    model = composed_model([f"class {i}" for i in range(NUM_CLASSES)], tmp_path, ["data.image_size=32"])
    trainer = bare_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, DataLoader(train_set, batch_size=48, shuffle=True), DataLoader(val_set, batch_size=48))

    reference = {
        "val/acc": MulticlassAccuracy(NUM_CLASSES, top_k=1, average="micro"),
        "val/acc_top5": MulticlassAccuracy(NUM_CLASSES, top_k=5, average="micro"),
        "val/f1_macro": MulticlassF1Score(NUM_CLASSES, average="macro"),
    }
    model.eval()
    with torch.no_grad():
        for images, labels in DataLoader(val_set, batch_size=48):
            logits = model(images)
            for metric in reference.values():
                metric.update(logits, labels)
    for name, metric in reference.items():
        assert trainer.callback_metrics[name].item() == pytest.approx(metric.compute().item(), abs=1e-6), name
