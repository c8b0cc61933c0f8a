"""How far a model's answers can be trusted on a labelled split: prediction-set coverage and size, accuracy
per gem family, how many photos the novelty rule turns away, and how right the surest answers are (the
risk-coverage area, and the answers given at each reported accuracy), from the same calibrated probabilities and
the same pass's backbone features as every other figure of the evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchmetrics.functional.classification import binary_auroc

from gem_lightning.trust.answers import Answering
from gem_lightning.trust.novelty import unlike_calibration
from gem_lightning.trust.prediction_sets import REPORTED_COVERAGES, set_quality
from gem_lightning.trust.selective_answers import REPORTED_ACCURACIES, SelectiveAnswers, risk_coverage_area


@dataclass(frozen=True)
class SetRow:
    target: float  # the coverage asked for
    coverage: float  # the share of images whose set held the true class
    mean_size: float
    single: float  # the share of images answered with one class


@dataclass(frozen=True)
class FamilyRow:
    family: str
    classes: int
    images: int
    top1: float  # class accuracy of its images
    family_top1: float  # the most probable family is theirs


@dataclass(frozen=True)
class NoveltyRow:
    accept: float  # the share of validation gems kept as known
    threshold: float  # the nearest-centroid distance beyond which a photo is "not one I know"
    unknown: int  # photos answered "not one of the classes I know" (all of them gems of known classes here)
    images: int
    top1_known: float  # class accuracy of the photos kept (nan when none is)
    unknown_wrong: int  # of the photos turned away, those whose top class was wrong
    median_distance: float
    # The photos as a set against the calibration photos (trust.novelty.Novelty.set_shift): one-sided KS D and p
    shift_statistic: float
    shift_p_value: float
    # How well the distance tells wrong answers from right ones: AUROC, 0.5 = not at all (nan: all right or all wrong)
    wrong_answer_auroc: float

    @property
    def shifted(self) -> bool:
        """Whether the photos are, as a set, farther from the classes than the calibration photos were."""
        return unlike_calibration(self.shift_p_value)


@dataclass(frozen=True)
class SelectiveRow:
    accuracy: float  # the accuracy asked (of validation's answers at or above the threshold)
    threshold: float  # the calibrated top probability below which no answer is given (inf: none is)
    answered: float  # the share of photos answered
    top1_answered: float  # how many of those answers were right (nan when none was given)


@dataclass(frozen=True)
class TrustEvaluation:
    sets: list[SetRow]  # one per REPORTED_COVERAGES (and the answers' coverage); empty without fitted sets
    set_score: str | None  # the fitted non-conformity score, None without fitted sets
    coverage: float  # the answers' coverage, which the per-class columns use
    class_families: list[str]  # per class, in class order
    class_coverage: list[float]  # per class, in class order (nan for a class without images)
    class_set_size: list[float]
    family_top1: float
    families: list[FamilyRow]  # the families of two or more classes, weakest first
    family_answers: int  # images answered with a family (unsure of the class)
    family_answers_right: int  # of those, the family was right
    family_answers_class_right: int  # of those, the top class was right
    novelty: NoveltyRow | None  # None without a novelty fit or features
    # The k surest answers' error averaged over every k (trust.selective_answers.risk_coverage_area)
    risk_coverage_area: float
    # The same AUROC as the novelty rule's, with the calibrated top probability (less sure: more likely wrong)
    confidence_wrong_answer_auroc: float
    selective: list[SelectiveRow]  # one per REPORTED_ACCURACIES; empty without the checkpoint's fit


def wrong_answer_auroc(score: torch.Tensor, wrong: torch.Tensor) -> float:
    """AUROC of ``score`` (larger: more likely wrong) for telling wrong answers from right ones; nan when the
    photos are all right or all wrong."""
    if wrong.all() or not wrong.any():
        return math.nan
    return float(binary_auroc(score.double(), wrong.long()))


def novelty_row(
    answering: Answering, features: torch.Tensor | None, predicted: torch.Tensor, targets: torch.Tensor
) -> NoveltyRow | None:
    distances = answering.distances(features)
    if distances is None:
        return None
    known = answering.known(distances)
    right = predicted == targets
    shift = answering.set_shift(distances)
    return NoveltyRow(
        accept=answering.accept,
        threshold=answering.novelty.threshold(answering.accept),
        unknown=int((~known).sum()),
        images=len(targets),
        top1_known=float(right[known].double().mean()) if known.any() else math.nan,
        unknown_wrong=int((~right[~known]).sum()),
        median_distance=float(distances.median()),
        shift_statistic=shift.statistic,
        shift_p_value=shift.p_value,
        wrong_answer_auroc=wrong_answer_auroc(distances, ~right),
    )


def selective_row(
    fitted: SelectiveAnswers, probabilities: torch.Tensor, targets: torch.Tensor, accuracy: float
) -> SelectiveRow:
    """At ``accuracy``: the threshold ``fitted`` gives, the share of these photos it answers, their top-1."""
    answered = fitted.answered(probabilities, accuracy)
    right = probabilities.argmax(dim=1) == targets
    top1 = float(right[answered].double().mean()) if answered.any() else math.nan
    return SelectiveRow(accuracy, fitted.threshold(accuracy), float(answered.double().mean()), top1)


def selective_rows(answering: Answering, probabilities: torch.Tensor, targets: torch.Tensor) -> list[SelectiveRow]:
    """A ``selective_row`` at each reported accuracy, with the checkpoint's fit (none without it)."""
    fitted = answering.selective_answers
    if fitted is None:
        return []
    return [selective_row(fitted, probabilities, targets, accuracy) for accuracy in REPORTED_ACCURACIES]


def trust_evaluation(
    probabilities: torch.Tensor,
    targets: torch.Tensor,
    class_names: list[str],
    answering: Answering,
    features: torch.Tensor | None = None,
) -> TrustEvaluation:
    """``probabilities`` (N, C) calibrated; ``targets`` (N,) class indices; ``features`` (N, F) the backbone
    features the novelty rule measures (None: not measured)."""
    sets, class_coverage, class_size = [], [math.nan] * len(class_names), [math.nan] * len(class_names)
    fitted = answering.prediction_sets
    if fitted is not None:
        by_target = {target: fitted.sets(probabilities, target) for target in {*REPORTED_COVERAGES, answering.coverage}}
        for target in sorted(by_target):
            quality = set_quality(by_target[target], targets)
            sets.append(SetRow(target, quality.coverage, quality.mean_size, quality.single))
        chosen = by_target[answering.coverage]
        for index in range(len(class_names)):
            members = targets == index
            if members.any():
                quality = set_quality(chosen[members], targets[members])
                class_coverage[index], class_size[index] = quality.coverage, quality.mean_size
    names, family_index = answering.taxonomy.families(class_names)
    true_family = family_index[targets]
    predicted_family = answering.taxonomy.family_probabilities(probabilities, family_index).argmax(dim=1)
    predicted = probabilities.argmax(dim=1)
    families = []
    for number, name in enumerate(names):
        members = true_family == number
        size = int((family_index == number).sum())
        if size > 1 and members.any():
            top1 = float((predicted[members] == targets[members]).double().mean())
            right = float((predicted_family[members] == number).double().mean())
            families.append(FamilyRow(name, size, int(members.sum()), top1, right))
    families.sort(key=lambda row: (row.family_top1, row.family))
    # Only the family part of each answer: the sets are measured above.
    family_answers = [answering.taxonomy.family_answer(photo, class_names) for photo in probabilities]
    answered = [(index, answer.family) for index, answer in enumerate(family_answers) if answer is not None]
    return TrustEvaluation(
        sets=sets,
        set_score=fitted.score if fitted is not None else None,
        coverage=answering.coverage,
        class_families=[answering.taxonomy.family_of(name) for name in class_names],
        class_coverage=class_coverage,
        class_set_size=class_size,
        family_top1=float((predicted_family == true_family).double().mean()),
        families=families,
        family_answers=len(answered),
        family_answers_right=sum(names[int(true_family[i])] == family for i, family in answered),
        family_answers_class_right=sum(int(predicted[i] == targets[i]) for i, _ in answered),
        novelty=novelty_row(answering, features, predicted, targets),
        risk_coverage_area=risk_coverage_area(probabilities.max(dim=1).values, predicted == targets),
        confidence_wrong_answer_auroc=wrong_answer_auroc(-probabilities.max(dim=1).values, predicted != targets),
        selective=selective_rows(answering, probabilities, targets),
    )
