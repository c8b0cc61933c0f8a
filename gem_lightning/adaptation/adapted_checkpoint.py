"""``adapt``: a checkpoint (or each of an ensemble's) adapted to a user's source from a labelled folder of its
photos, written as a new file.

The new checkpoint is the original (weights untouched) plus the folder's class prototypes
(``source_prototypes``), and with the fits that depend on what the logits look like refitted on that folder, each
photo left out of its own class's prototype so that they see answers on photos the prototypes have not seen:
the temperature, the prediction sets (same score and settings as the original's), the confidences for answering
only when sure (``trust.selective_answers``), and the novelty rule, whose
class directions gain the prototypes and whose threshold comes from the folder's photos. Those fits use only
the photos the network did not train on (a run retrained with ``data.extra_roots`` trained on some of them), as
every fit of the kind must; where it trained on all, they use all, and a warning says they will be too sure.
Predict, evaluate, export and the web page take it like any checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from gem_lightning.errors import GemLightningError
from gem_lightning.evaluation.calibration import CalibrationResult, calibrate, store_calibration
from gem_lightning.evaluation.checkpoint_evaluation import labelled_folder
from gem_lightning.inference.loop import DatasetOutputs
from gem_lightning.inference.predictor import Predictor
from gem_lightning.models.classifier import GemClassifier
from gem_lightning.models.source_prototypes import SourcePrototypes
from gem_lightning.trust.nearest_photos import TrainingPhotos
from gem_lightning.trust.novelty import Novelty, nearest_class_distances
from gem_lightning.trust.prediction_sets import PredictionSets, fit_prediction_sets
from gem_lightning.trust.selective_answers import SelectiveAnswers, fit_selective_answers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptedFits:
    """What adapting to a source fits, each from the source's labelled photos."""

    prototypes: SourcePrototypes
    fitted_on: torch.Tensor  # (N,) bool: the labelled photos the temperature, sets, answers and novelty used
    calibration: CalibrationResult
    prediction_sets: PredictionSets | None  # None when the original checkpoint had none
    novelty: Novelty | None
    selective_answers: SelectiveAnswers

    def logits(self, head_logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The adapted model's raw logits from the original head's and the backbone features."""
        return head_logits + self.prototypes.added_logits(features)


@dataclass(frozen=True)
class AdaptedCheckpoint:
    path: Path
    fits: AdaptedFits


def labelled_features(predictor: Predictor, folder: Path) -> list[DatasetOutputs]:
    """One pass of each (unadapted) member over a labelled folder, each preparing the photos as its run did: its
    head's logits, its features and the labels, a result per member, photos in the same order."""
    if predictor.tta != "none" or predictor.adapt_batchnorm:
        raise GemLightningError(
            "adapt takes checkpoints without test-time views or adapt_batchnorm: the prototypes are of each model's "
            "features of the photos as they are"
        )
    for checkpoint, model in zip(predictor.checkpoints, predictor.models, strict=True):
        if model.source_prototypes is not None:
            source = model.source_prototypes["source"]
            raise GemLightningError(
                f"{checkpoint} is already adapted to {source}: adapt the checkpoint it was made from"
            )
    datasets, _, _ = labelled_folder(predictor, folder, predictor.cache_dir)
    return predictor.member_logits(datasets, description=f"features of {folder.name}")


def adapted_checkpoint_path(checkpoint: Path, folder: Path) -> Path:
    """``<run>/checkpoints/best-adapted-<folder name>.ckpt``: beside the original, named by both."""
    return checkpoint.with_name(f"{checkpoint.stem}-adapted-{folder.resolve().name}{checkpoint.suffix}")


def photos_new_to(model: GemClassifier, features: torch.Tensor, source: str) -> torch.Tensor:
    """(N,) bool: the labelled photos ``model`` did not train on (``TrainingPhotos.seen``), which the fits of an
    adapted checkpoint use; every photo, with one warning, when it trained on all of them."""
    if model.training_photos is None:  # a checkpoint without sets fitted stores no training photos
        return torch.ones(len(features), dtype=torch.bool)
    seen = TrainingPhotos(**model.training_photos).seen(features)
    if bool(seen.all()):
        log.warning(
            "the network trained on every one of the %d labelled photos of %s: the temperature, prediction sets and "
            "answer threshold refitted on them will be surer than its other photos warrant. For honest ones, adapt "
            "with photos it did not train on (with data.extra_roots_held_out=true, a run holds some out)",
            len(seen),
            Path(source).name,
        )
        return torch.ones_like(seen)
    if bool(seen.any()):
        log.info(
            "%d of the %d labelled photos of %s are training photos of the network: the prototypes use all of them, "
            "the temperature, sets, answer threshold and novelty rule the other %d",
            int(seen.sum()),
            len(seen),
            Path(source).name,
            int((~seen).sum()),
        )
    return ~seen


def fit_adaptation(model: GemClassifier, passed: DatasetOutputs, weight: float, source: str) -> AdaptedFits:
    """Prototypes from one pass of the unadapted ``model`` over a source's labelled photos (head logits, features,
    labels), then the temperature, sets and novelty rule on the held-out adapted logits of those of the photos
    the network did not train on (``photos_new_to``)."""
    prototypes = SourcePrototypes.fit(passed.features, passed.targets, len(model.class_names), weight, source)
    held_out_added = prototypes.held_out_logits(passed.features, passed.targets)
    fitted_on = photos_new_to(model, passed.features, source)
    features, targets, held_out_added = passed.features[fitted_on], passed.targets[fitted_on], held_out_added[fitted_on]
    held_out = passed.outputs[fitted_on] + held_out_added
    split = f"{Path(source).name} (each photo left out of its class's prototype)"
    calibration = calibrate(held_out, targets, split=split)
    probabilities = (held_out / calibration.temperature).softmax(-1)
    sets = None
    if model.prediction_sets is not None:
        settings = {key: model.prediction_sets[key] for key in ("score", "penalty", "free_ranks")}
        sets = fit_prediction_sets(probabilities, targets, split=split, **settings)
    novelty = None
    if model.novelty is not None:
        novelty = _novelty_with_prototypes(model.novelty, prototypes, features, held_out_added, split)
    selective = fit_selective_answers(probabilities, targets, split=split)
    return AdaptedFits(prototypes, fitted_on, calibration, sets, novelty, selective)


def adapt_checkpoints(
    predictor: Predictor, folder: str | Path, weight: float, output: str | Path | None = None
) -> list[AdaptedCheckpoint]:
    """Fit ``folder``'s prototypes (``<folder>/<class>/<photos>``, classes the model knows) for each checkpoint of
    ``predictor`` and write each adapted checkpoint to ``output`` (one checkpoint only) or, by default, beside its
    original (``adapted_checkpoint_path``); no original file is changed. Members are adapted each on its own
    features, so the adapted files make the adapted ensemble (``ckpt=[...]``)."""
    folder = Path(folder)
    if output is not None and len(predictor.models) > 1:
        raise GemLightningError(
            f"output={output} names one file, and ckpt= lists {len(predictor.models)}: leave output out, and each "
            "adapted checkpoint is written beside its original"
        )
    results = labelled_features(predictor, folder)
    adapted = []
    for checkpoint, model, passed in zip(predictor.checkpoints, predictor.models, results, strict=True):
        fits = fit_adaptation(model, passed, weight, str(folder.resolve()))
        fitted = {"source_prototypes": fits.prototypes.as_dict(), "selective_answers": fits.selective_answers.as_dict()}
        if fits.prediction_sets is not None:
            fitted["prediction_sets"] = fits.prediction_sets.as_dict()
        if fits.novelty is not None:
            fitted["novelty"] = fits.novelty.as_dict()
        path = Path(output) if output is not None else adapted_checkpoint_path(checkpoint, folder)
        store_calibration(checkpoint, fits.calibration, fitted, written_to=path)
        log.info("adapted to %s: %s", fits.prototypes.describe(model.class_names), path)
        adapted.append(AdaptedCheckpoint(path, fits))
    return adapted


def _novelty_with_prototypes(
    stored: dict, prototypes: SourcePrototypes, features: torch.Tensor, held_out_added: torch.Tensor, split: str
) -> Novelty:
    """The original class directions and the source's prototypes; the threshold from the labelled photos'
    distances, each to its own class's prototype refitted without it (``held_out_added``, the prototypes'
    ``held_out_logits``, over the weight: cosines)."""
    original = Novelty(**stored)
    held_out_cosines = held_out_added / prototypes.weight
    distances = torch.minimum(
        nearest_class_distances(features, original.centroids), 1.0 - held_out_cosines.double().max(dim=1).values
    )
    centroids = torch.cat([original.centroids, prototypes.prototypes[prototypes.photos > 0]])
    images = original.training_images + int(prototypes.photos.sum())  # the prototypes average every labelled photo
    return Novelty(centroids, images, split, sorted(distances.tolist()))
