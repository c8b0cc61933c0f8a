"""Every number of an evaluation, computed from one pass of logits over a labelled split.

Top-1/top-5 accuracy, macro F1 and the per-class table come from torchmetrics (the same definitions the
training run logged); calibration from ``gem_lightning.evaluation.calibration``. Nothing here draws or writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from gem_lightning.evaluation.calibration import (
    ReliabilityBin,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)
from gem_lightning.evaluation.trust_metrics import TrustEvaluation, trust_evaluation
from gem_lightning.inference.loop import DatasetOutputs
from gem_lightning.trust.answers import Answering


@dataclass(frozen=True)
class ClassRow:
    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ConfusedPair:
    first: str
    second: str
    first_as_second: int  # images of ``first`` predicted as ``second``
    second_as_first: int

    @property
    def total(self) -> int:
        return self.first_as_second + self.second_as_first


@dataclass(frozen=True)
class Evaluation:
    class_names: list[str]
    temperature: float
    # top1, top5, f1_macro, nll/ece before and after, leak-free figures, mean recall over the classes present
    # (recall_mean) and how many of them no photo was recognised of (classes_at_zero)
    summary: dict[str, float]
    classes: list[ClassRow]  # every class, in class order
    confusion: torch.Tensor  # (C, C) counts, rows = true class
    confused_pairs: list[ConfusedPair]  # most confused first
    misclassified: list[int]  # indices into the evaluated images, most confident mistake first
    targets: torch.Tensor  # (N,) true class index
    predicted: torch.Tensor  # (N,) top-1 class index
    confidence: torch.Tensor  # (N,) calibrated top-1 probability
    reliability_before: list[ReliabilityBin]
    reliability_after: list[ReliabilityBin]
    trust: TrustEvaluation | None  # sets, families, novelty (None: evaluated without answering rules)


def _accuracy(probabilities: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    num_classes = probabilities.shape[1]
    return float(multiclass_accuracy(probabilities, targets, num_classes, average="micro", top_k=min(k, num_classes)))


def most_confused_pairs(confusion: torch.Tensor, class_names: list[str], limit: int = 15) -> list[ConfusedPair]:
    """Unordered class pairs by how many images went either way between them (ties by name)."""
    pairs = []
    for i in range(len(class_names)):
        for j in range(i + 1, len(class_names)):
            forward, backward = int(confusion[i, j]), int(confusion[j, i])
            if forward or backward:
                pairs.append(ConfusedPair(class_names[i], class_names[j], forward, backward))
    pairs.sort(key=lambda pair: (-pair.total, pair.first, pair.second))
    return pairs[:limit]


def recall_over_present(scores: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, float]:
    """``classes_present``, ``recall_mean`` and ``classes_at_zero`` of (N, C) scores: over the classes with photos
    here, since a user's folder or another source rarely holds all of them and an absent class has no recall
    (torchmetrics would count it as 0). The one computation of mean recall (evaluate, the adaptation curve)."""
    recall = multiclass_recall(scores, targets, num_classes, average=None)
    present = torch.bincount(targets, minlength=num_classes) > 0
    return {
        "classes_present": float(present.sum()),
        "recall_mean": float(recall[present].mean()) if present.any() else 0.0,
        "classes_at_zero": float((recall[present] == 0).sum()),
    }


def evaluate_logits(
    result: DatasetOutputs, class_names: list[str], temperature: float, answering: Answering | None = None
) -> Evaluation:
    """Every figure from one pass of raw logits; ``answering`` adds prediction sets, gem families and (with the
    pass's features) the share of photos the novelty rule turns away."""
    logits, targets = result.outputs, result.targets
    num_classes = len(class_names)
    raw = logits.softmax(-1)
    calibrated = (logits / temperature).softmax(-1)
    summary = {
        "images": float(len(targets)),
        "top1": _accuracy(calibrated, targets, 1),
        "top5": _accuracy(calibrated, targets, 5),
        "f1_macro": float(multiclass_f1_score(calibrated, targets, num_classes, average="macro")),
        "nll_before": negative_log_likelihood(logits, targets),
        "nll_after": negative_log_likelihood(logits, targets, temperature),
        "ece_before": expected_calibration_error(raw, targets),
        "ece_after": expected_calibration_error(calibrated, targets),
    }
    clean = ~result.leaked
    if result.leaked.any() and clean.any():
        # Test images that duplicate a training image would flatter the figures; report both.
        summary["leaked_images"] = float(result.leaked.sum())
        summary["top1_leak_free"] = _accuracy(calibrated[clean], targets[clean], 1)
        summary["top5_leak_free"] = _accuracy(calibrated[clean], targets[clean], 5)
    precision = multiclass_precision(calibrated, targets, num_classes, average=None)
    recall = multiclass_recall(calibrated, targets, num_classes, average=None)
    f1 = multiclass_f1_score(calibrated, targets, num_classes, average=None)
    support = torch.bincount(targets, minlength=num_classes)
    summary.update(recall_over_present(calibrated, targets, num_classes))
    classes = [
        ClassRow(name, float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, name in enumerate(class_names)
    ]
    confusion = multiclass_confusion_matrix(calibrated, targets, num_classes)
    confidence, predicted = calibrated.max(dim=1)
    wrong = (predicted != targets).nonzero().flatten()
    # The model's most confident mistakes first: those are the ones worth looking at.
    misclassified = sorted(wrong.tolist(), key=lambda i: -float(confidence[i]))
    trust = trust_evaluation(calibrated, targets, list(class_names), answering, result.features) if answering else None
    if trust is not None:
        summary["family_top1"] = trust.family_top1
        if trust.novelty is not None:
            summary["unknown_share"] = trust.novelty.unknown / trust.novelty.images
            summary["top1_known"] = trust.novelty.top1_known
            summary["novelty_shift_d"] = trust.novelty.shift_statistic
            summary["novelty_shift_p"] = trust.novelty.shift_p_value
            summary["novelty_wrong_auroc"] = trust.novelty.wrong_answer_auroc
        for row in trust.sets:
            summary[f"set_coverage_{round(100 * row.target)}"] = row.coverage
            summary[f"set_size_{round(100 * row.target)}"] = row.mean_size
        summary["risk_coverage_area"] = trust.risk_coverage_area
        summary["confidence_wrong_auroc"] = trust.confidence_wrong_answer_auroc
        for row in trust.selective:
            summary[f"answered_at_{round(100 * row.accuracy)}"] = row.answered
            summary[f"top1_answered_at_{round(100 * row.accuracy)}"] = row.top1_answered
    return Evaluation(
        class_names=list(class_names),
        temperature=temperature,
        summary=summary,
        classes=classes,
        confusion=confusion,
        confused_pairs=most_confused_pairs(confusion, list(class_names)),
        misclassified=misclassified,
        targets=targets,
        predicted=predicted,
        confidence=confidence,
        reliability_before=reliability_bins(raw, targets),
        reliability_after=reliability_bins(calibrated, targets),
        trust=trust,
    )
