"""Head-only training (``model.head_only``): a frozen backbone's features of every image, computed once, cached
on disk, and served by the data module in place of the images (the ``HeadOnlyFeatures`` callback)."""

# With the backbone frozen, an epoch of head training only needs each image's pooled feature vector, which
# never changes: computing them once turns an epoch into a few small matrix products, and every head-only
# trial of a sweep over the same data and backbone reuses the same file.
#
# The file is ``<cache_dir>/features/<key>.npy`` (float32, one row per image, in the dataset's order). The key
# hashes the images (their array file name, which hashes every file's path, size and mtime), the evaluation
# size, the backbone's name and weights, and the precision they are computed in, so nothing stale is reused.
# It is written atomically under a lock: concurrent trials wait and then read it.

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import TensorDataset

from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.data.image_arrays import array_file
from gem_lightning.data.image_dataset import GemImageDataset
from gem_lightning.files.atomic_writes import write_bytes_atomically
from gem_lightning.files.locks import exclusive_lock
from gem_lightning.inference.loop import run_over_dataset
from gem_lightning.models.classifier import GemClassifier

log = logging.getLogger(__name__)

FEATURES_FORMAT = 1


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A hash of every tensor in ``module``'s state dict (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous().reshape(-1)  # 1-D: a 0-d tensor cannot be viewed as bytes
        digest.update(f"{name}|{tuple(tensor.shape)}|{value.dtype}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def features_file(model: GemClassifier, images: GemImageDataset, cache_dir: Path, precision: str) -> Path:
    image_key = array_file([path for path, _ in images.items], images.side, cache_dir).stem
    size = model.hparams.image_size
    key = hashlib.sha256(
        "|".join(
            [
                str(FEATURES_FORMAT),
                image_key,
                str(size),
                model.hparams.backbone,
                weights_fingerprint(model.backbone),
                precision,
            ]
        ).encode()
    ).hexdigest()[:16]
    return Path(cache_dir) / "features" / f"{model.hparams.backbone}-{size}px-{len(images)}-{key}.npy"


def backbone_features(
    model: GemClassifier,
    images: GemImageDataset,
    cache_dir: Path,
    precision: str,
    forward_context: Callable[[], AbstractContextManager],
    batch_size: int,
    num_workers: int,
) -> torch.Tensor:
    """(len(images), F) float32 features of ``images`` through ``model``'s backbone in eval mode, on the
    model's device, inside ``forward_context`` (the trainer's precision); read from the cache when there."""
    target = features_file(model, images, cache_dir, precision)
    with exclusive_lock(target.with_suffix(".lock")):
        if target.is_file():
            log.info("backbone features from %s", target)
            return torch.from_numpy(np.load(target))
        log.info("computing %s features of %d images once into %s", model.hparams.backbone, len(images), target)
        was_training = model.training
        model.eval()
        features = run_over_dataset(
            lambda batch: model.features(batch).float(),
            images,
            model.device,
            batch_size=batch_size,
            num_workers=num_workers,
            forward_context=forward_context,
        ).outputs
        model.train(was_training)
        buffer = io.BytesIO()
        np.save(buffer, features.numpy())
        write_bytes_atomically(target, buffer.getvalue())
    return features


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
    image_files = [item.image_file for item in data.prepared.items]
    every_image = GemImageDataset(
        [(path, 0) for path in image_files],
        None,
        data.image_size,
        array=data.eval_array,
        rows=list(range(len(image_files))),
    )
    features = backbone_features(
        model,
        every_image,
        data.cache_dir,
        # Float32 whatever trainer.precision says: they are computed once, and the test split's features must
        # give the logits the evaluation report computes (in float32), or the run logs two test accuracies.
        precision="32-true",
        forward_context=lambda: torch.autocast(model.device.type, enabled=False),
        batch_size=data.batch_size,
        num_workers=data.num_workers,
    )
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
        if model.hparams.get("head_only") and isinstance(data, GemDataModule) and data.feature_datasets is None:
            data.feature_datasets = feature_datasets(model, data)
