"""Backbone features of a data module's prepared images, computed once per set of weights and cached on disk.

Head-only training serves them in place of images (``training.head_only_features``); calibration averages the
training photos' features into class centroids and measures the validation photos' distances to them
(``trust.novelty``). The same weights over the same images are computed once for both.
"""

# The file is ``<cache_dir>/features/<key>.npy`` (float32, one row per image, in the dataset's order). The key
# hashes the images (their array file name, which hashes every file's path, size and mtime), the evaluation
# size, the backbone's name and weights, the model's white balance and the precision they are computed in, so
# nothing stale is reused.
# It is written atomically under a lock: concurrent trials wait and then read it.

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch

from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.data.image_arrays import array_file
from gem_lightning.data.image_dataset import GemImageDataset
from gem_lightning.files.atomic_writes import folder_is_writable, write_bytes_atomically
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
                # Only when on, so that every features file cached before the setting existed keeps its key.
                *([f"white_balance={model.hparams.white_balance}"] if model.hparams.white_balance != "none" else []),
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
    model's device, inside ``forward_context`` (the trainer's precision); read from the cache when there.
    A read-only cache (which the data module has warned about) gets them computed and not stored."""
    target = features_file(model, images, cache_dir, precision)
    writable = folder_is_writable(cache_dir, "paths.cache_dir")
    # A read-only cache cannot hold the lock file either; nothing is written there, so nothing needs locking.
    with exclusive_lock(target.with_suffix(".lock")) if writable else nullcontext():
        if target.is_file():
            log.info("backbone features from %s", target)
            return torch.from_numpy(np.load(target))
        stored = f"once into {target}" if writable else "(not stored: the cache is read-only)"
        log.info("computing %s features of %d images %s", model.hparams.backbone, len(images), stored)
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
        if writable:
            buffer = io.BytesIO()
            np.save(buffer, features.numpy())
            write_bytes_atomically(target, buffer.getvalue())
    return features


def prepared_image_features(model: GemClassifier, data: GemDataModule) -> torch.Tensor:
    """(N, F) float32 features of every prepared image of ``data`` (row i = ``data.prepared.items[i]``, its
    evaluation square, which each split dataset's ``rows`` index), cached."""
    image_files = [item.image_file for item in data.prepared.items]
    every_image = GemImageDataset(
        [(path, 0) for path in image_files],
        None,
        data.image_size,
        array=data.eval_array,
        rows=list(range(len(image_files))),
    )
    return backbone_features(
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
