"""The training photos a photo resembles: nearest first, only of the classes asked, itself when it is one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gem_lightning.trust.answers import Answering
from gem_lightning.trust.families import Taxonomy
from gem_lightning.trust.nearest_photos import TrainingPhotos


def _photos() -> tuple[TrainingPhotos, torch.Tensor]:
    features = torch.randn(30, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(30) % 4  # four classes, class 3 of 7 photos
    photos = [Path(f"/data/gems/class{int(label)}/photo{index}.jpg") for index, label in enumerate(labels)]
    photos[7] = Path("/photos/my-shop/class3/photo7.jpg")  # a photo of an extra source (data.extra_roots)
    return TrainingPhotos.of(3.0 * features, labels, photos, "/data/gems"), features


def test_a_training_photo_is_its_own_nearest_and_only_the_classes_asked_are_searched():
    photos, features = _photos()
    (per_class,) = photos.nearest(features[5:6], torch.tensor([[1, 2]]), per_class=3)
    own, other = per_class
    assert own[0].file == Path("/data/gems/class1/photo5.jpg") and own[0].distance == pytest.approx(0.0, abs=2e-3)
    assert [near.class_index for near in own] == [1, 1, 1] and [near.class_index for near in other] == [2, 2, 2]
    for found in (own, other):
        distances = [near.distance for near in found]
        assert distances == sorted(distances)
        # The nearest three of that class by cosine distance, as a brute-force search finds them.
        members = [i for i in range(30) if photos.labels[i] == found[0].class_index]
        cosine = torch.nn.functional.cosine_similarity(features[5:6], features[members])
        expected = sorted(1.0 - float(c) for c in cosine)[:3]
        assert distances == pytest.approx(expected, abs=2e-3)
    (shop,) = photos.nearest(features[7:8], torch.tensor([[3]]), per_class=1)[0]
    assert shop[0].file == Path("/photos/my-shop/class3/photo7.jpg")
    stored = TrainingPhotos(**photos.as_dict())
    assert stored.files[:2] == ["class0/photo0.jpg", "class1/photo1.jpg"]  # relative to the data folder
    assert stored.files == photos.files and torch.equal(stored.features, photos.features)
    assert stored.features.dtype == torch.float16  # 6 MB for Kaggle's 2,413 photos of 1,280 features


def test_an_answer_shows_the_nearest_photos_of_its_top_classes_in_their_order():
    photos, features = _photos()
    names = ["Ruby", "Spinel", "Garnet Red", "Emerald"]
    answering = Answering(
        names, Taxonomy("t", 0.5, {}), None, 0.9, novelty=None, accept=0.95, training_photos=photos.as_dict()
    )
    probabilities = torch.tensor([[0.15, 0.2, 0.6, 0.05]])
    (answer,) = answering.answers(probabilities, 2, features[:1])
    shown = [names[near.class_index] for near in answer.nearest]
    assert shown == ["Garnet Red", "Garnet Red", "Spinel", "Spinel", "Ruby", "Ruby"]  # the top 3, two each
    (without_features,) = answering.answers(probabilities, 2)
    assert without_features.nearest is None
