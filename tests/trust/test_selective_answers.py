"""Answering only when sure: the threshold a target accuracy gives, and the risk-coverage area."""

from __future__ import annotations

import math

import pytest
import torch

from gem_lightning.errors import GemLightningError
from gem_lightning.trust.selective_answers import fit_selective_answers, risk_coverage_area


def _probabilities(top: list[float], predicted: list[int], classes: int = 3) -> torch.Tensor:
    rows = torch.zeros(len(top), classes)
    for row, (probability, label) in enumerate(zip(top, predicted, strict=True)):
        rows[row] = (1 - probability) / (classes - 1)
        rows[row, label] = probability
    return rows


def test_the_threshold_answers_the_most_photos_whose_answers_reach_the_accuracy():
    # Surest first: right, right, wrong, right -> the k surest are right 1, 1, 2/3, 3/4 of the time.
    probabilities = _probabilities([0.7, 0.9, 0.6, 0.8], [0, 1, 2, 1])
    targets = torch.tensor([1, 1, 2, 1])  # the 0.7 answer (class 0) is the wrong one
    fitted = fit_selective_answers(probabilities, targets, split="val")
    assert fitted.confidences == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert fitted.correct == [True, True, False, True]
    assert fitted.threshold(0.75) == pytest.approx(0.6)  # all four: 3 of 4 right
    assert fitted.threshold(0.8) == pytest.approx(0.8)  # the two surest
    assert fitted.answered(_probabilities([0.85, 0.75], [0, 0]), 0.8).tolist() == [True, False]
    never = fit_selective_answers(_probabilities([0.9], [0]), torch.tensor([1]))
    assert math.isinf(never.threshold(0.5))  # no share of its answers is ever right
    with pytest.raises(GemLightningError, match="selective.accuracy=1.2"):
        fitted.threshold(1.2)


def test_the_risk_coverage_area_is_the_mean_error_of_the_surest_answers():
    confidence = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert risk_coverage_area(confidence, torch.tensor([True, True, False, True])) == pytest.approx((1 / 3 + 1 / 4) / 4)
    # Every wrong answer less sure than every right one: only the unavoidable error once they are reached.
    assert risk_coverage_area(confidence, torch.tensor([True, True, True, True])) == 0.0
    assert risk_coverage_area(confidence, torch.tensor([False, True, True, True])) > risk_coverage_area(
        confidence, torch.tensor([True, True, True, False])
    )
