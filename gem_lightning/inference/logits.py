"""A model's logits over a dataset: test-time views, one pass per model, and an ensemble's average.

``collect_logits`` runs one model over a dataset through the inference loop, each batch under every view of
``tta`` (flips, quarter turns; ``TTA_VIEWS`` is the one list of choices); ``averaged_probabilities`` turns
several such passes into one prediction, each at its own model's temperature.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from gem_lightning.choices import checked_choice
from gem_lightning.data.image_dataset import GemImageDataset
from gem_lightning.inference.loop import DatasetOutputs, run_over_dataset
from gem_lightning.models.classifier import GemClassifier


def _dihedral(turns: int, flip: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    def view(images: torch.Tensor) -> torch.Tensor:
        turned = torch.rot90(images, turns, dims=(-2, -1))
        return turned.flip(-1) if flip else turned

    return view


# Test-time views of a square batch. A loose stone has no upright, so every quarter turn and mirror image is
# a photo of the same stone; the one list of choices for predict, evaluate and the web page.
TTA_VIEWS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], ...]] = {
    "none": (_dihedral(0, False),),
    "flip": (_dihedral(0, False), _dihedral(0, True)),
    "quarter_turns": tuple(_dihedral(turns, False) for turns in range(4)),
    "dihedral": tuple(_dihedral(turns, flip) for flip in (False, True) for turns in range(4)),
}


def tta_views(tta: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], ...]:
    return TTA_VIEWS[checked_choice(tta, TTA_VIEWS, "tta")]


def view_logits(
    model: GemClassifier, images: torch.Tensor, views: Sequence[Callable]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V, C) float32 logits of a batch on the model's device, one column per test-time view, and (N, F)
    the backbone features of the first view (the photo as it is), which the logits were computed from."""
    logits, first_features = [], None
    for view in views:
        features = model.features(view(images)).float()
        first_features = features if first_features is None else first_features
        logits.append(model.classify(features).float())
    return torch.stack(logits, dim=1), first_features


def collect_logits(
    model: GemClassifier,
    dataset: GemImageDataset,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
    description: str = "predicting",
    tta: str = "none",
) -> DatasetOutputs:
    """Run ``model`` (in eval mode, on its own device, in float32) over ``dataset`` in batches, with a progress
    bar. The outputs are raw logits (before temperature): (N, V, C) with test-time views (``tta``), else (N, C);
    the features those of the photos as they are (N, F)."""
    views = tta_views(tta)
    model.eval()
    passed = run_over_dataset(
        lambda images: view_logits(model, images, views),
        dataset,
        next(model.parameters()).device,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        description=description,
    )
    return passed if tta != "none" else replace(passed, outputs=passed.outputs[:, 0])


def averaged_probabilities(results: list[DatasetOutputs], temperatures: list[float]) -> DatasetOutputs:
    """One prediction from several models' (and views') logits: each divided by its own model's temperature,
    made probabilities, and averaged. Returned as logits, log(mean), so softmax gives the mean back and the one
    evaluation path takes it with temperature 1. The features stay the first model's (its novelty fit's space)."""
    probabilities = [
        (result.outputs / temperature).softmax(-1).reshape(len(result.outputs), -1, result.outputs.shape[-1])
        for result, temperature in zip(results, temperatures, strict=True)
    ]
    mean = torch.cat(probabilities, dim=1).mean(dim=1)
    return replace(results[0], outputs=mean.clamp_min(torch.finfo(mean.dtype).tiny).log())
