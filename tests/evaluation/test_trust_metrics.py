"""How well a score tells wrong answers from right ones."""

from __future__ import annotations

import math

import torch

from gem_lightning.evaluation.trust_metrics import wrong_answer_auroc


def test_wrong_answer_auroc_is_one_when_every_wrong_answer_scores_higher_and_half_when_the_score_says_nothing():
    wrong = torch.tensor([False, False, True, True])
    assert wrong_answer_auroc(torch.tensor([0.1, 0.2, 0.3, 0.4]), wrong) == 1.0
    assert wrong_answer_auroc(torch.tensor([0.4, 0.3, 0.2, 0.1]), wrong) == 0.0
    assert wrong_answer_auroc(torch.tensor([0.1, 0.3, 0.1, 0.3]), wrong) == 0.5
    assert math.isnan(wrong_answer_auroc(torch.tensor([0.1, 0.2]), torch.tensor([False, False])))
