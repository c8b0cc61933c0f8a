"""The one loop that runs a model over a dataset: evaluation, prediction and the head-only feature cache use it.

``run_over_dataset(compute, dataset, ...)`` batches the dataset in its order, moves each batch of uint8 images
to ``device``, calls ``compute`` on it in inference mode (inside ``forward_context``, e.g. the trainer's
precision), and returns the outputs stacked on the CPU with the batches' targets and leak flags. ``compute``
may return (outputs, features): the logits and the backbone features they came from, kept from one pass.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset

from gem_lightning.data.image_dataset import collate_batch
from gem_lightning.errors import GemLightningError


@dataclass(frozen=True)
class DatasetOutputs:
    """One pass over a dataset: what ``compute`` returned per image (raw logits for evaluation and prediction,
    backbone features for the head-only cache), and the dataset's labels and leak flags."""

    outputs: torch.Tensor  # (N, ...) as compute returned it, on the CPU
    targets: torch.Tensor  # (N,) int64; -1 where unlabelled
    leaked: torch.Tensor  # (N,) bool; all false when the dataset has no leak flags
    features: torch.Tensor | None = None  # (N, F) backbone features, when compute returned them


def run_over_dataset(
    compute: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = False,
    description: str = "predicting",
    forward_context: Callable[[], AbstractContextManager] = nullcontext,
) -> DatasetOutputs:
    """``compute`` over every image of ``dataset`` in order; see the module docstring."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_batch,
        # Its own generator: a pass draws nothing from the global RNG, so running it (or finding its result in
        # a cache instead) leaves shuffling and dropout of the run around it as they were.
        generator=torch.Generator(),
    )
    outputs, features, targets, leaked = [], [], [], []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar, torch.inference_mode(), forward_context():
        task = bar.add_task(description, total=len(dataset))
        for batch in loader:
            images = batch[0].to(device, non_blocking=True)
            computed = compute(images)
            if isinstance(computed, tuple):
                computed, batch_features = computed
                features.append(batch_features.cpu())
            outputs.append(computed.cpu())
            targets.append(torch.as_tensor(batch[1]))
            leaked.append(torch.as_tensor(batch[2]).bool() if len(batch) == 3 else torch.zeros(len(images), dtype=bool))
            bar.advance(task, len(images))
    if not outputs:
        raise GemLightningError("no images to run the model on")
    stacked_features = torch.cat(features) if features else None
    return DatasetOutputs(torch.cat(outputs), torch.cat(targets).long(), torch.cat(leaked), stacked_features)
