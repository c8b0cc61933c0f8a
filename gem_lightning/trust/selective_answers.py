"""Answer only when sure enough: the calibrated top probability above which answers were right at a target rate.

``fit_selective_answers`` keeps, for the calibration photos (the run's validation split, or an adapted source's
labelled photos), each one's calibrated top probability and whether that answer was right, surest first.
``threshold(accuracy)`` is the lowest top probability at which the answers at or above it were right at least
``accuracy`` of the time there, answering as many of them as that allows (inf: no share reaches it). It is a
plug-in estimate, not a guarantee: on photos unlike the calibration ones the answers kept can be right far less
often, which every evaluation measures (``REPORTED_ACCURACIES``) beside the risk-coverage area.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from gem_lightning.errors import GemLightningError

REPORTED_ACCURACIES = (0.85, 0.95)  # what every evaluation report measures, as REPORTED_COVERAGES for the sets


def check_accuracy(accuracy: float) -> float:
    if not 0.0 < accuracy < 1.0:
        raise GemLightningError(
            f"selective.accuracy={accuracy} must be between 0 and 1: the share of the answers given that should be "
            "right, e.g. 0.85 (null answers every photo)"
        )
    return accuracy


def risk_coverage(confidence: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """(N,) the accuracy of the k surest answers, k = 1..N (ties in the order given)."""
    order = confidence.argsort(descending=True, stable=True)
    right = correct[order].double()
    return right.cumsum(0) / torch.arange(1, len(right) + 1, dtype=torch.float64)


def risk_coverage_area(confidence: torch.Tensor, correct: torch.Tensor) -> float:
    """AURC: the error of the k surest answers averaged over every k (0: the wrong answers are the least sure
    and there are none; a model whose confidence says nothing scores its plain error)."""
    if len(correct) == 0:
        return math.nan
    return float(1.0 - risk_coverage(confidence, correct).mean())


@dataclass(frozen=True)
class SelectiveAnswers:
    split: str  # where it was fitted
    confidences: list[float]  # the calibration photos' calibrated top probabilities, surest first
    correct: list[bool]  # whether each of those answers was right, in the same order

    def threshold(self, accuracy: float) -> float:
        """The lowest top probability an answer may have (inf: none is given)."""
        accuracies = risk_coverage(torch.tensor(self.confidences), torch.tensor(self.correct))
        reaching = (accuracies >= check_accuracy(accuracy)).nonzero().flatten()
        if len(reaching) == 0:
            return math.inf
        return self.confidences[int(reaching[-1])]

    def answered(self, probabilities: torch.Tensor, accuracy: float) -> torch.Tensor:
        """(N,) bool: which of (N, C) calibrated probabilities are sure enough to answer."""
        return probabilities.max(dim=1).values >= self.threshold(accuracy)

    def as_dict(self) -> dict:
        return asdict(self)


def fit_selective_answers(probabilities: torch.Tensor, targets: torch.Tensor, split: str = "val") -> SelectiveAnswers:
    """From calibrated (N, C) probabilities of labelled photos the model did not train on."""
    if len(targets) == 0:
        raise GemLightningError(f"cannot fit selective answers on an empty {split} split")
    confidence, predicted = probabilities.max(dim=1)
    order = confidence.argsort(descending=True, stable=True)
    correct = (predicted == targets)[order]
    return SelectiveAnswers(split, confidence[order].tolist(), correct.tolist())
