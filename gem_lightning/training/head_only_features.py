"""Head-only training (``model.head_only``): a frozen backbone's features of every image, computed once, cached
on disk (``inference.backbone_features``), and served by the data module in place of the images (the
``HeadOnlyFeatures`` callback)."""

# With the backbone frozen, an epoch of head training only needs each image's pooled feature vector, which
# never changes: computing them once turns an epoch into a few small matrix products, and every head-only
# trial of a sweep over the same data and backbone reuses the same file.

from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch
from torch.utils.data import TensorDataset

from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.inference.backbone_features import prepared_image_features
from gem_lightning.models.classifier import GemClassifier

log = logging.getLogger(__name__)


def feature_datasets(model: GemClassifier, data: GemDataModule) -> dict[str, TensorDataset]:
    """Each split of ``data`` as (features, labels[, leak flags]) in place of its images: one cached pass of the
    backbone over every prepared image (its evaluation square), indexed by each dataset's rows."""
    if data.augment_policy != "none":
        log.warning(
            "model.head_only=true trains on features of the unaugmented images: augment=%s is not applied",
            data.augment_policy,
        )
    if data.background_swap is not None:
        log.warning("model.head_only=true trains on features of the photos as they are: background_swap is not applied")
    features = prepared_image_features(model, data)
    served = {}
    for name, dataset in data.datasets.items():
        columns = [features[dataset.rows], torch.tensor([label for _, label in dataset.items], dtype=torch.long)]
        if dataset.leaked is not None:
            columns.append(torch.tensor(dataset.leaked, dtype=torch.bool))
        served[name] = TensorDataset(*columns)
    return served


class HeadOnlyFeatures(pl.Callback):
    """For a head-only model, hands the data module every split as feature rows before the first loader is asked
    for: at fit start (the model on its device), or at setup for a test or validation of its own. A no-op for
    other models; ``build_trainer`` adds it to every Trainer."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            self._serve(trainer, pl_module)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._serve(trainer, pl_module)

    @staticmethod
    def _serve(trainer: pl.Trainer, model: pl.LightningModule) -> None:
        data = trainer.datamodule
        if not model.hparams.get("head_only") or not isinstance(data, GemDataModule) or data.feature_datasets:
            return
        # Under data parallelism one process a machine computes and caches the features while the others wait,
        # then they read its file: the cache is built once, not raced for (barrier: a no-op in one process).
        if trainer.local_rank == 0:
            data.feature_datasets = feature_datasets(model, data)
        trainer.strategy.barrier("head-only features")
        if data.feature_datasets is None:
            data.feature_datasets = feature_datasets(model, data)
