"""Not one of the classes I know: how far a photo's backbone features are from every class the model learnt.

``fit_novelty`` keeps, per class, the mean direction of its training photos' features (L2-normalised, then
averaged and normalised again) and the sorted distances of the validation photos to their nearest class.
A photo's novelty is the cosine distance from its features to the nearest of those centroids; it is answered
"not one of the classes I know" when that exceeds the threshold at which a share ``accept`` of validation
photos is kept: the ceil((n + 1) * accept)-th smallest of the n validation distances, the split-conformal
rule, so on photos like the validation ones at most 1 - accept of known gems are turned away (in expectation).
``accept=1`` never turns a photo away.

Why distances and not the top probability: a softmax is sure of some class whatever the photo shows. On the
seed-42 Kaggle model, at 95 % of validation gems kept, the calibrated top probability turned away 78 % of
ImageNet photos and 9.9 % of test gems; the nearest centroid 94 % and 4.7 % (README, "Not a gem").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.stats import ks_2samp

from gem_lightning.errors import GemLightningError

# A set of photos whose distances are larger than the calibration photos' at this p-value is reported as unlike
# them: one set in a thousand drawn like the calibration photos is reported so by chance.
SHIFT_P_VALUE = 0.001


def unlike_calibration(p_value: float) -> bool:
    """The one rule for ``Novelty.set_shift``'s p-value: are the photos, as a set, unlike the calibration ones?"""
    return p_value < SHIFT_P_VALUE


def class_centroids(features: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, F) unit mean direction of each class's (N, F) features; a class without photos gets a zero row,
    which no photo is near (cosine distance 1)."""
    directions = F.normalize(features.double(), dim=1)
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64).index_add_(0, targets, directions)
    return F.normalize(sums, dim=1).float()


def nearest_class_distances(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(N,) cosine distance (0: the same direction, 2: opposite) from each photo to its nearest centroid."""
    similarity = F.normalize(features.double(), dim=1) @ centroids.double().T
    return 1.0 - similarity.max(dim=1).values


def check_accept(accept: float) -> float:
    if not 0.0 < accept <= 1.0:
        raise GemLightningError(
            f"novelty.accept={accept} must be in (0, 1]: the share of validation gems kept as known, e.g. 0.95 "
            "(1 turns no photo away)"
        )
    return accept


@dataclass(frozen=True)
class Novelty:
    """A fitted novelty rule: the class centroids and the calibration photos' distances to them."""

    # (C, F) float32 unit rows, one per class (zero for a class without training photos); an adapted checkpoint's
    # has its source's prototypes as more rows (adaptation.adapted_checkpoint): the nearest of all counts
    centroids: torch.Tensor
    training_images: int  # how many photos the centroids average
    split: str  # where the distances were measured
    calibration_distances: list[float]  # sorted ascending, one per calibration photo

    def threshold(self, accept: float) -> float:
        """The largest distance a known photo may have (inf: every photo is known)."""
        rank = math.ceil((len(self.calibration_distances) + 1) * check_accept(accept))
        return math.inf if rank > len(self.calibration_distances) else self.calibration_distances[rank - 1]

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != self.centroids.shape[1]:
            raise GemLightningError(
                f"features of width {features.shape[-1]} against centroids of width {self.centroids.shape[1]}: "
                "the novelty fit belongs to another backbone"
            )
        return nearest_class_distances(features, self.centroids)

    def set_shift(self, distances: torch.Tensor) -> tuple[float, float]:
        """Whether photos are, as a set, farther from the classes than the calibration photos were: the one-sided
        two-sample Kolmogorov-Smirnov statistic D (the largest gap by which fewer of them than of the calibration
        photos lie within some distance) and its p-value. Photos drawn like the calibration ones give small D and
        a p-value spread evenly over (0, 1); ``SHIFT_P_VALUE`` is the line below which a report says so."""
        result = ks_2samp(distances.double().numpy(), self.calibration_distances, alternative="less")
        return float(result.statistic), float(result.pvalue)

    def describe(self, accept: float) -> dict:
        """The rule as predict's JSON states it: ``accept``, the threshold (null: every photo is known), and what
        it was fitted on."""
        threshold = self.threshold(accept)
        return {
            "accept": accept,
            "threshold": threshold if math.isfinite(threshold) else None,
            "fitted_on": f"centroids of {self.training_images} training images, "
            f"distances of {len(self.calibration_distances)} {self.split} images",
        }

    def as_dict(self) -> dict:
        """What a checkpoint stores (plain types and one tensor, so it loads with ``weights_only=True``)."""
        return {
            "centroids": self.centroids.clone(),
            "training_images": self.training_images,
            "split": self.split,
            "calibration_distances": list(self.calibration_distances),
        }


def fit_novelty(
    training_features: torch.Tensor,
    training_targets: torch.Tensor,
    calibration_features: torch.Tensor,
    num_classes: int,
    split: str = "val",
) -> Novelty:
    """Centroids from the training photos' features, distances from photos the model did not train on."""
    if len(training_targets) == 0 or len(calibration_features) == 0:
        raise GemLightningError(f"cannot fit the novelty rule without training and {split} photos")
    centroids = class_centroids(training_features, training_targets, num_classes)
    distances = nearest_class_distances(calibration_features, centroids)
    return Novelty(centroids, len(training_targets), split, sorted(distances.tolist()))
