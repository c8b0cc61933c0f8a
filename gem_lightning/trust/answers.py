"""One photo's answer in words and fields, from its calibrated probabilities and backbone features: the top
classes, the prediction set at the chosen coverage, the family when the class is unsure, and "not one of the
classes I know" when the photo is far from all of them, and the training photos it most resembles in each of its
top classes. Photos answered together that are, as a set, unlike the calibration photos (``Novelty.set_shift``)
have that said in each answer: the certainty it states was measured on photos like those. ``predict`` and the
web page form answers here, so they say the same thing; the evaluation report measures the same sets, family
answers and novelty."""

from __future__ import annotations

from dataclasses import dataclass

import hydra
import torch

from gem_lightning.trust.families import FamilyAnswer, Taxonomy
from gem_lightning.trust.nearest_photos import CLASSES_SHOWN, NearPhoto, TrainingPhotos
from gem_lightning.trust.novelty import Novelty, check_accept, unlike_calibration
from gem_lightning.trust.prediction_sets import PredictionSets
from gem_lightning.trust.selective_answers import SelectiveAnswers, check_accuracy

LONGEST_SET_NAMED = 4  # a larger set is named by its size and first classes
# What an answer among photos unlike the calibration ones adds to the certainty it states.
UNLIKE_CALIBRATION = "on photos like the validation ones (these are unlike them)"


@dataclass(frozen=True)
class SetShift:
    """Photos answered together against the calibration photos, as ``Novelty.set_shift`` measures them."""

    photos: int
    statistic: float  # the one-sided Kolmogorov-Smirnov D of their distances to the classes
    p_value: float

    @property
    def unlike_calibration(self) -> bool:
        return unlike_calibration(self.p_value)


@dataclass(frozen=True)
class Answer:
    top: list[tuple[str, float]]  # the k most probable (class, probability), most probable first
    prediction_set: list[str] | None  # the set's classes, most probable first; None without fitted sets
    coverage: float | None  # the set's coverage
    family: FamilyAnswer | None
    known: bool | None  # within the novelty threshold of some class; None without a novelty fit or features
    novelty: float | None  # cosine distance of the photo's features to the nearest class centroid
    classes: int  # how many classes the model knows
    nearest: list[NearPhoto] | None  # the nearest training photos of each of the top classes, in their order
    # False: less sure than the answers that were right at the asked accuracy on validation (trust.selective_answers);
    # None: every photo is answered (no accuracy asked, or no fit)
    sure_enough: bool | None = None
    accuracy: float | None = None  # the accuracy asked
    # The photos answered with it against the calibration photos, one object for all of them; when unlike them,
    # the certainty it states may not hold. None: not measured (no novelty fit or features)
    set_shift: SetShift | None = None

    def sentence(self) -> str:
        """``Ruby or Spinel, 90% sure``; ``a garnet (75%): Rhodolite 45%, Almandine 30%; ...``;
        ``not one of the 87 classes I know (nearest: Ruby, 40%)``"""
        if self.known is False:
            name, probability = self.top[0]
            return f"not one of the {self.classes} classes I know (nearest: {name}, {probability:.0%})"
        if self.sure_enough is False:
            name, probability = self.top[0]
            return (
                f"not sure enough to answer: less sure than answers that were {self.accuracy:.0%} right on "
                f"validation (most probable: {name}, {probability:.0%})"
            )
        parts = []
        if self.family is not None:
            members = ", ".join(f"{name} {probability:.0%}" for name, probability in self.family.members)
            parts.append(f"a {self.family.family} ({self.family.probability:.0%}): {members}")
        if self.prediction_set is None:
            name, probability = self.top[0]
            parts.append(f"{name} ({probability:.0%})")
        elif len(self.prediction_set) <= LONGEST_SET_NAMED:
            parts.append(f"{' or '.join(self.prediction_set)}, {self.coverage:.0%} sure")
        else:
            named = ", ".join(self.prediction_set[:LONGEST_SET_NAMED])
            parts.append(f"one of {len(self.prediction_set)} classes ({named}, ...), {self.coverage:.0%} sure")
        if self.set_shift is not None and self.set_shift.unlike_calibration:
            parts[-1] += f" {UNLIKE_CALIBRATION}"
        return "; ".join(parts)


class Answering:
    """How probabilities become answers for one model: its classes, taxonomy and (when fitted) its sets and
    novelty rule."""

    def __init__(
        self,
        class_names: list[str],
        taxonomy: Taxonomy,
        prediction_sets: dict | None,
        coverage: float,
        *,
        novelty: dict | None,
        accept: float,
        training_photos: dict | None = None,
        selective_answers: dict | None = None,
        accuracy: float | None = None,
    ):
        """``prediction_sets``, ``novelty``, ``training_photos``, ``selective_answers``: the fits as a checkpoint
        stores them (``as_dict()``), or None. ``accept``: the share of validation gems the novelty rule keeps as
        known. ``accuracy``: answer only photos at least as sure as validation answers that were right at this
        rate (None: answer every photo)."""
        self.class_names, self.taxonomy, self.coverage = class_names, taxonomy, coverage
        self.prediction_sets = PredictionSets(**prediction_sets) if prediction_sets else None
        if self.prediction_sets is not None:
            self.prediction_sets.threshold(coverage)  # a bad coverage fails before any photo is read
        self.novelty = Novelty(**novelty) if novelty else None
        self.accept = check_accept(accept)
        self.training_photos = TrainingPhotos(**training_photos) if training_photos else None
        self.selective_answers = SelectiveAnswers(**selective_answers) if selective_answers else None
        self.accuracy = None if accuracy is None else check_accuracy(accuracy)

    def distances(self, features: torch.Tensor | None) -> torch.Tensor | None:
        """(N,) each photo's distance to the nearest class centroid; None without a novelty fit or features."""
        return self.novelty.distances(features) if self.novelty is not None and features is not None else None

    def set_shift(self, distances: torch.Tensor | None) -> SetShift | None:
        """How photos answered together, by their ``distances``, compare as a set with the calibration photos; None
        without a novelty fit or features."""
        if self.novelty is None or distances is None or len(distances) == 0:
            return None
        return SetShift(len(distances), *self.novelty.set_shift(distances))

    def known(self, distances: torch.Tensor) -> torch.Tensor:
        """(N,) bool: which of these distances the novelty rule keeps (the rest: "not one I know")."""
        return distances <= self.novelty.threshold(self.accept)

    def answers(self, probabilities: torch.Tensor, k: int, features: torch.Tensor | None = None) -> list[Answer]:
        """One answer per row of (N, C) calibrated probabilities, with (N, F) backbone features when known."""
        k = min(k, len(self.class_names))
        sets = self.prediction_sets.sets(probabilities, self.coverage) if self.prediction_sets else None
        distances = self.distances(features)
        known = self.known(distances) if distances is not None else None
        shift = self.set_shift(distances)
        sure_enough = None
        if self.accuracy is not None and self.selective_answers is not None:
            sure_enough = self.selective_answers.answered(probabilities, self.accuracy)
        nearest = None
        if self.training_photos is not None and features is not None:
            top_classes = probabilities.topk(min(CLASSES_SHOWN, len(self.class_names)), dim=1).indices
            nearest = [sum(per_class, []) for per_class in self.training_photos.nearest(features, top_classes)]
        result = []
        for row, photo in enumerate(probabilities):
            values, indices = photo.topk(k)
            top = [(self.class_names[int(i)], float(v)) for v, i in zip(values, indices, strict=True)]
            members = None
            if sets is not None:
                order = photo.argsort(descending=True)
                members = [self.class_names[int(i)] for i in order if sets[row, i]]
            result.append(
                Answer(
                    top,
                    members,
                    self.coverage if sets is not None else None,
                    self.taxonomy.family_answer(photo, self.class_names),
                    None if known is None else bool(known[row]),
                    None if distances is None else float(distances[row]),
                    len(self.class_names),
                    None if nearest is None else nearest[row],
                    None if sure_enough is None else bool(sure_enough[row]),
                    self.accuracy,
                    shift,
                )
            )
        return result


def answering_for(predictor, cfg) -> Answering:
    """The answering rules a command's config gives a predictor (``inference.predictor.Predictor``): its
    ``taxonomy``, ``prediction_sets``, ``novelty`` and ``selective`` nodes, with the checkpoint's fits where they
    apply."""
    taxonomy = hydra.utils.instantiate(cfg.taxonomy)
    coverage, accept = cfg.prediction_sets.coverage, cfg.novelty.accept
    return Answering(
        predictor.class_names,
        taxonomy,
        predictor.prediction_sets,
        coverage,
        novelty=predictor.novelty,
        accept=accept,
        training_photos=predictor.training_photos,
        selective_answers=predictor.selective_answers,
        accuracy=cfg.selective.accuracy,
    )
