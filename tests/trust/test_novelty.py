"""The novelty rule: known photos kept at the rate asked, photos far from every class turned away, the wording."""

from __future__ import annotations

import math

import pytest
import torch

from gem_lightning.errors import GemLightningError
from gem_lightning.trust.answers import UNLIKE_CALIBRATION, Answering
from gem_lightning.trust.families import Taxonomy
from gem_lightning.trust.novelty import SHIFT_P_VALUE, Novelty, class_centroids, fit_novelty


def _seeded_features(images: int, classes: int, seed: int, spread: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels): photos of ``classes`` classes as noisy copies of each class's own direction in 64
    dimensions (the directions fixed by ``classes`` alone, the noise and labels by ``seed``)."""
    directions = torch.randn(classes, 64, generator=torch.Generator().manual_seed(classes))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (images,), generator=generator)
    return directions[labels] + spread * torch.randn(images, 64, generator=generator), labels


def test_known_photos_are_kept_as_often_as_asked_and_others_turned_away():
    train, train_labels = _seeded_features(2000, 10, seed=0)
    validation, _ = _seeded_features(2000, 10, seed=1)
    fitted = fit_novelty(train, train_labels, validation, num_classes=10)
    held_out, _ = _seeded_features(3000, 10, seed=2)
    for accept in (0.8, 0.9, 0.95):
        kept = float((fitted.distances(held_out) <= fitted.threshold(accept)).double().mean())
        # Split conformal on exchangeable photos: kept at the rate asked, within 3 standard errors of 3,000.
        assert abs(kept - accept) <= 3 * math.sqrt(accept * (1 - accept) / 3000) + 1 / 2001, (accept, kept)
    # Photos of 10 other classes (other directions) are far from every known class.
    strangers, _ = _seeded_features(500, 11, seed=3)
    turned_away = float((fitted.distances(strangers) > fitted.threshold(0.95)).double().mean())
    assert turned_away > 0.9, turned_away
    assert fitted.threshold(1.0) == math.inf  # accept=1 keeps every photo


def test_centroids_are_unit_class_directions_and_a_class_without_photos_is_near_nothing():
    features = torch.tensor([[2.0, 0.0], [0.0, 3.0], [4.0, 0.0]])
    centroids = class_centroids(features, torch.tensor([0, 1, 0]), num_classes=3)
    assert torch.allclose(centroids, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    fitted = fit_novelty(features, torch.tensor([0, 1, 0]), torch.tensor([[1.0, 1.0]]), num_classes=3)
    assert fitted.distances(torch.tensor([[5.0, 0.0], [-1.0, 0.0]])).tolist() == pytest.approx([0.0, 1.0])
    stored = Novelty(**fitted.as_dict())
    assert stored.calibration_distances == fitted.calibration_distances and torch.equal(stored.centroids, centroids)


def test_a_bad_accept_or_another_backbone_is_one_line():
    fitted = fit_novelty(torch.eye(3), torch.arange(3), torch.eye(3), num_classes=3)
    for accept in (0.0, 1.5):
        with pytest.raises(GemLightningError, match=rf"novelty.accept={accept} must be in \(0, 1\]"):
            fitted.threshold(accept)
    with pytest.raises(GemLightningError, match="features of width 4 against centroids of width 3"):
        fitted.distances(torch.ones(1, 4))


def test_a_photo_far_from_every_class_is_answered_not_one_i_know():
    names = ["Ruby", "Spinel", "Emerald"]
    fitted = fit_novelty(torch.eye(3), torch.arange(3), 0.9 * torch.eye(3) + 0.05, num_classes=3)
    taxonomy = Taxonomy("test", 0.5, {})
    # Three calibration photos: accept=0.7 keeps the 3rd smallest distance (0.95 would keep every photo).
    answering = Answering(names, taxonomy, None, 0.9, novelty=fitted.as_dict(), accept=0.7)
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    near, far = answering.answers(probabilities, 2, torch.tensor([[1.0, 0.05, 0.05], [-1.0, -1.0, 0.0]]))
    assert near.known is True and near.sentence() == "Ruby (70%)"
    assert far.known is False and far.novelty > fitted.threshold(0.7)
    assert far.sentence() == "not one of the 3 classes I know (nearest: Ruby, 60%)"
    # Without features (or without a fit) nothing is turned away and nothing is claimed.
    (unmeasured,) = answering.answers(probabilities[:1], 2)
    assert unmeasured.known is None and unmeasured.novelty is None


def test_a_set_of_photos_farther_than_the_validation_ones_is_reported_as_unlike_them():
    train, train_labels = _seeded_features(2000, 10, seed=0)
    validation, _ = _seeded_features(400, 10, seed=1)
    fitted = fit_novelty(train, train_labels, validation, num_classes=10)
    # Photos drawn like the validation ones: no alarm on any of 20 draws of 300 (one in a thousand would be).
    for seed in range(2, 22):
        alike, _ = _seeded_features(300, 10, seed=seed)
        statistic, p_value = fitted.set_shift(fitted.distances(alike))
        assert p_value >= SHIFT_P_VALUE and statistic < 0.15, (seed, statistic, p_value)
    # Noisier photos of the same classes (another camera, other light) sit farther from them: reported.
    unlike, _ = _seeded_features(300, 10, seed=30, spread=0.8)
    statistic, p_value = fitted.set_shift(fitted.distances(unlike))
    assert p_value < SHIFT_P_VALUE and statistic > 0.3
    # Photos nearer the classes than validation ones are no warning: the test is one-sided.
    nearer, _ = _seeded_features(300, 10, seed=31, spread=0.4)
    assert fitted.set_shift(fitted.distances(nearer))[1] > 0.5


def test_answers_among_photos_unlike_the_validation_ones_say_their_certainty_was_measured_on_others():
    train, train_labels = _seeded_features(2000, 10, seed=0)
    validation, _ = _seeded_features(400, 10, seed=1)
    fitted = fit_novelty(train, train_labels, validation, num_classes=10)
    names = [f"class {i}" for i in range(10)]
    answering = Answering(names, Taxonomy("test", 0.5, {}), None, 0.9, novelty=fitted.as_dict(), accept=1.0)

    def sentences(features: torch.Tensor, labels: torch.Tensor) -> list[str]:
        probabilities = torch.nn.functional.one_hot(labels, 10).float() * 0.6 + 0.04
        answers = answering.answers(probabilities, 3, features)
        shift = answering.set_shift(fitted.distances(features))
        # One rule: each answer holds the set's test (which predict's JSON reports).
        assert all(answer.set_shift == shift for answer in answers)
        return [answer.sentence() for answer in answers]

    alike = sentences(*_seeded_features(300, 10, seed=2))
    assert all(sentence.endswith("(64%)") for sentence in alike), alike[:3]
    unlike = sentences(*_seeded_features(300, 10, seed=30, spread=0.8))
    assert all(sentence.endswith(f"(64%) {UNLIKE_CALIBRATION}") for sentence in unlike), unlike[:3]
    # One photo is never a set unlike the calibration ones, however far (its p-value cannot fall that low).
    far, labels = _seeded_features(1, 10, seed=30, spread=3.0)
    assert sentences(far, labels) == [f"class {int(labels[0])} (64%)"]
