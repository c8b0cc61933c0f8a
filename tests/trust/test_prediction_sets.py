"""Conformal prediction sets: the coverage guarantee on held-out data, agreement with crepes, the edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from crepes import ConformalClassifier

from gem_lightning.errors import GemLightningError
from gem_lightning.trust.prediction_sets import SCORES, class_scores, fit_prediction_sets, set_quality


def _seeded_model(images: int, classes: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded 'model' of 60-70 % top-1 accuracy whose labels are drawn from its own, over-confident view:
    (probabilities, labels) of ``images`` photos."""
    generator = torch.Generator().manual_seed(seed)
    logits = 2.5 * torch.randn(images, classes, generator=generator)
    labels = torch.multinomial((logits / 1.5).softmax(-1), 1, generator=generator)[:, 0]  # truth is less sure
    return logits.softmax(-1), labels


@pytest.mark.parametrize("score", SCORES)
def test_sets_cover_held_out_photos_as_often_as_asked(score):
    probabilities, labels = _seeded_model(6000)
    fitted = fit_prediction_sets(probabilities[:3000], labels[:3000], score=score, penalty=0.05, free_ranks=2)
    for coverage in (0.8, 0.9, 0.95):
        quality = set_quality(fitted.sets(probabilities[3000:], coverage), labels[3000:])
        # Split conformal: at least `coverage` in expectation; 3 standard errors of 3,000 photos either side,
        # and the top class always added can only raise it. aps (not randomised) over-covers by design.
        error = 3 * math.sqrt(coverage * (1 - coverage) / 3000)
        assert quality.coverage >= coverage - error, (score, coverage, quality)
        if score == "lac":
            assert quality.coverage <= coverage + error + 1 / 3001, (coverage, quality)
    # lac and aps sets adapt to how sure each photo is (raps' penalty evens their sizes out by design).
    sizes = fitted.sets(probabilities[3000:], 0.9).sum(dim=1)
    if score != "raps":
        assert sizes.min() == 1 and sizes.max() > sizes.float().mean() + 1


@pytest.mark.parametrize("score", SCORES)
def test_sets_agree_with_crepes_on_the_same_scores(score):
    probabilities, labels = _seeded_model(1500, seed=1)
    fitted = fit_prediction_sets(probabilities[:500], labels[:500], score=score, penalty=0.05, free_ranks=2)
    scores = class_scores(probabilities[500:], score, 0.05, 2)
    reference = ConformalClassifier().fit(np.array(fitted.calibration_scores))
    for coverage in (0.8, 0.9, 0.95):
        theirs = reference.predict_set(scores.numpy(), confidence=coverage, smoothing=False).astype(bool)
        ours = (scores <= fitted.threshold(coverage)).numpy()
        assert (theirs == ours).all(), coverage


def test_every_set_holds_the_top_class_and_grows_with_coverage():
    probabilities, labels = _seeded_model(800, seed=2)
    fitted = fit_prediction_sets(probabilities[:400], labels[:400])
    test = probabilities[400:]
    small, large = fitted.sets(test, 0.5), fitted.sets(test, 0.95)
    assert small[torch.arange(len(test)), test.argmax(dim=1)].all()
    assert (large | small).equal(large)  # nested
    # Too few calibration photos for the coverage asked: every class.
    tiny = fit_prediction_sets(probabilities[:5], labels[:5])
    assert tiny.sets(test[:3], 0.9).all()


def test_a_bad_coverage_or_score_is_one_line():
    probabilities, labels = _seeded_model(50)
    fitted = fit_prediction_sets(probabilities, labels)
    with pytest.raises(GemLightningError, match=r"conformal.coverage=90 must be between 0 and 1"):
        fitted.threshold(90)
    with pytest.raises(GemLightningError, match=r"conformal.score='apss': use one of lac, aps, raps"):
        fit_prediction_sets(probabilities, labels, score="apss")


def test_a_fit_describes_itself_in_plain_json_even_where_every_class_is_in():
    probabilities, labels = _seeded_model(9, seed=3)
    fitted = fit_prediction_sets(probabilities, labels)
    described = fitted.describe(0.95)  # ceil(10 * 0.95) = 10 > 9 scores: every class, no finite threshold
    assert described["threshold"] is None and described["thresholds"]["0.8"] == fitted.threshold(0.8)
    assert described["fitted_on"] == "9 val images" and json.loads(json.dumps(described, allow_nan=False))
