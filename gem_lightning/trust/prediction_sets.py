"""Split-conformal prediction sets: for a coverage such as 0.9, the classes that hold a photo's true class
nine times in ten (on photos like the calibration ones), whatever the model.

``fit_prediction_sets`` keeps the sorted scores of the true class over a calibration split (the validation
split, after the temperature is fitted); ``PredictionSets.sets`` turns any coverage into a threshold and each
photo's probabilities into the classes whose score is within it. The scores (``SCORES``, the one list):

- ``lac``: 1 - p(class) (Sadinle et al., 2019): the smallest sets on average; the default.
- ``aps``: the probability mass of every class at least as likely as this one (Romano et al., 2020), without
  randomisation so that a photo always gets the same answer; it over-covers, with larger sets.
- ``raps``: aps plus ``penalty`` for each rank beyond ``free_ranks`` (Angelopoulos et al., 2021), which cuts the
  long tail of unlikely classes that aps sweeps in.

The threshold is the ceil((n + 1) * coverage)-th smallest of the n calibration scores (every class when that
exceeds n). The most probable class is always in the set, so a set is never empty; that only adds coverage.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from gem_lightning.choices import checked_choice
from gem_lightning.errors import GemLightningError

SCORES = ("lac", "aps", "raps")
REPORTED_COVERAGES = (0.8, 0.9, 0.95)  # what every evaluation report measures


def class_scores(probabilities: torch.Tensor, score: str, penalty: float = 0.0, free_ranks: int = 0) -> torch.Tensor:
    """(N, C) non-conformity of every class of every photo (lower: more plausible) from (N, C) probabilities."""
    checked_choice(score, SCORES, "conformal.score")
    probabilities = probabilities.double()
    if score == "lac":
        return 1.0 - probabilities
    ordered, order = probabilities.sort(dim=1, descending=True)
    ranked = ordered.cumsum(dim=1)
    if score == "raps":
        ranks = torch.arange(1, probabilities.shape[1] + 1, dtype=torch.float64)
        ranked = ranked + penalty * (ranks - free_ranks).clamp_min(0)
    return torch.empty_like(probabilities).scatter_(1, order, ranked)


@dataclass(frozen=True)
class PredictionSets:
    """A fitted split-conformal predictor: the score and the calibration images' true-class scores."""

    score: str
    penalty: float
    free_ranks: int
    split: str  # where it was fitted
    calibration_scores: list[float]  # sorted ascending, one per calibration image

    def threshold(self, coverage: float) -> float:
        """The largest score a class may have to be in a set of this coverage (inf: every class)."""
        if not 0.0 < coverage < 1.0:
            raise GemLightningError(f"conformal.coverage={coverage} must be between 0 and 1, e.g. 0.9")
        rank = math.ceil((len(self.calibration_scores) + 1) * coverage)
        return math.inf if rank > len(self.calibration_scores) else self.calibration_scores[rank - 1]

    def sets(self, probabilities: torch.Tensor, coverage: float) -> torch.Tensor:
        """(N, C) bool: which classes are in each photo's set (the most probable one always is)."""
        scores = class_scores(probabilities, self.score, self.penalty, self.free_ranks)
        chosen = scores <= self.threshold(coverage)
        chosen[torch.arange(len(probabilities)), probabilities.argmax(dim=1)] = True
        return chosen

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self, coverage: float) -> dict:
        """The fit as predict's JSON and export's ``model.json`` state it: score, settings, the threshold at
        ``coverage`` and at each reported coverage (null: every class), and what it was fitted on."""

        def finite(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {
            "score": self.score,
            "penalty": self.penalty,
            "free_ranks": self.free_ranks,
            "coverage": coverage,
            "threshold": finite(self.threshold(coverage)),
            "thresholds": {str(target): finite(self.threshold(target)) for target in REPORTED_COVERAGES},
            "fitted_on": f"{len(self.calibration_scores)} {self.split} images",
        }


def fit_prediction_sets(
    probabilities: torch.Tensor,
    targets: torch.Tensor,
    score: str = "lac",
    penalty: float = 0.0,
    free_ranks: int = 0,
    split: str = "val",
) -> PredictionSets:
    """Fit on calibrated (N, C) probabilities of labelled images the model did not train on."""
    if len(targets) == 0:
        raise GemLightningError(f"cannot fit prediction sets on an empty {split} split")
    scores = class_scores(probabilities, score, penalty, free_ranks).gather(1, targets[:, None])[:, 0]
    return PredictionSets(score, float(penalty), int(free_ranks), split, sorted(scores.tolist()))


@dataclass(frozen=True)
class SetQuality:
    coverage: float  # the share of photos whose set holds the true class
    mean_size: float  # classes per set
    single: float  # the share of photos answered with one class


def set_quality(sets: torch.Tensor, targets: torch.Tensor) -> SetQuality:
    sizes = sets.sum(dim=1).double()
    covered = sets.gather(1, targets[:, None])[:, 0].double()
    return SetQuality(float(covered.mean()), float(sizes.mean()), float((sizes == 1).double().mean()))
