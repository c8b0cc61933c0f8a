"""Source prototypes: what they add to the logits, and the held-out logits the adapted fits are made on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gem_lightning.adaptation.curve import drawn_photos
from gem_lightning.errors import GemLightningError
from gem_lightning.models.source_prototypes import SourcePrototypes


def _photos(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    targets = torch.tensor([0, 0, 0, 2, 2, 3])  # class 1 has no photo, class 3 only one
    return torch.rand(len(targets), 16, generator=generator), targets


def test_a_prototype_is_the_mean_direction_of_its_photos_and_a_class_without_photos_adds_nothing():
    features, targets = _photos()
    prototypes = SourcePrototypes.fit(features, targets, num_classes=5, weight=40.0, source="/x/shop")
    assert prototypes.photos.tolist() == [3, 0, 2, 1, 0]
    expected = F.normalize(F.normalize(features[:3], dim=1).mean(dim=0), dim=0)
    assert torch.allclose(prototypes.prototypes[0], expected, atol=1e-6)
    added = prototypes.added_logits(features)
    assert torch.allclose(added[:, 0], 40.0 * F.normalize(features, dim=1) @ expected, atol=1e-4)
    assert (added[:, [1, 4]] == 0).all()
    assert prototypes.describe(["a", "b", "c", "d", "e"]) == "1 to 3 photos each of 3 of 5 classes of shop"
    stored = SourcePrototypes.from_dict(prototypes.as_dict())
    assert torch.equal(stored.prototypes, prototypes.prototypes) and torch.equal(stored.photos, prototypes.photos)
    assert (stored.weight, stored.source) == (40.0, "/x/shop")
    with pytest.raises(GemLightningError, match="weight=0"):
        SourcePrototypes.fit(features, targets, 5, 0.0, "shop")


def test_held_out_logits_are_those_of_prototypes_fitted_without_the_photo():
    features, targets = _photos(seed=1)
    prototypes = SourcePrototypes.fit(features, targets, num_classes=5, weight=40.0, source="shop")
    held_out = prototypes.held_out_logits(features, targets)
    for index in range(len(targets)):
        others = torch.arange(len(targets)) != index
        without = SourcePrototypes.fit(features[others], targets[others], 5, 40.0, "shop")
        refitted = without.added_logits(features[index : index + 1])[0]
        own = int(targets[index])
        # Its own class: refitted without it (class 3's only photo gets nothing); the others: as fitted.
        assert torch.allclose(held_out[index, own], refitted[own], atol=1e-4), index
        expected_others = prototypes.added_logits(features[index : index + 1])[0]
        mask = torch.arange(5) != own
        assert torch.allclose(held_out[index, mask], expected_others[mask], atol=1e-4), index
    assert held_out[5, 3] == 0


def test_drawn_photos_take_n_a_class_and_never_more_than_half():
    targets = torch.tensor([0] * 10 + [1] * 4 + [2] * 1)
    drawn = drawn_photos(targets, shots=3, seed=0)
    assert [int(drawn[targets == c].sum()) for c in range(3)] == [3, 2, 0]
    assert torch.equal(drawn, drawn_photos(targets, shots=3, seed=0))
    assert not torch.equal(drawn, drawn_photos(targets, shots=3, seed=1))
