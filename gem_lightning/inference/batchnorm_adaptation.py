"""Test-time adaptation of BatchNorm statistics to a set of photos (AdaBN, Li et al. 2016).

A network trained on one source normalises every layer's activations by that source's means and variances;
photos from elsewhere (other light, cameras, backgrounds) arrive with others. ``batchnorm_adapted`` returns a
copy of the model whose BatchNorm layers' running statistics are measured afresh on the given photos, as they
are (one pass, no labels, no weights learnt), so the layers normalise those photos as they did the training
ones. The model given is left as it was. Photos that are alike as a set (one shop, one phone) are what it is
for; a mixed folder gets mixed statistics.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from gem_lightning.data.image_dataset import GemImageDataset
from gem_lightning.errors import GemLightningError
from gem_lightning.inference.loop import run_over_dataset
from gem_lightning.models.classifier import GemClassifier


def batchnorm_adapted(
    model: GemClassifier,
    dataset: GemImageDataset,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = False,
) -> GemClassifier:
    """A copy of ``model`` (eval mode) with every BatchNorm layer's running mean and variance those of
    ``dataset``'s photos: the cumulative average over the pass's batches (momentum None), each layer seeing the
    activations the layers before it, already adapted, produce."""
    adapted = copy.deepcopy(model).eval()
    norms = [module for module in adapted.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise GemLightningError(f"{type(model.backbone).__name__} has no BatchNorm layer to adapt")
    if len(dataset) < 2:
        raise GemLightningError("adapting BatchNorm statistics needs at least 2 photos")
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over every batch of the pass, not an exponential one
        norm.train()
    # Batch statistics need more than one photo per batch: a last batch of one is folded into the average of
    # those before it by a batch size that leaves none alone.
    size = batch_size
    while len(dataset) % size == 1:
        size += 1

    def measure(images: torch.Tensor) -> torch.Tensor:
        adapted.features(images)
        return torch.zeros(len(images))

    with torch.no_grad():
        run_over_dataset(
            measure,
            dataset,
            next(adapted.parameters()).device,
            batch_size=size,
            num_workers=num_workers,
            progress=progress,
            description="adapting BatchNorm statistics",
        )
    return adapted.eval()
