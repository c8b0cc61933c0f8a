"""White balance (``model.white_balance``): the reference region comes out grey, a colour cast is undone, a black
background changes nothing, and the classifier applies it on every path into the network."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from gem_lightning.data.image_dataset import evaluation_dataset
from gem_lightning.inference.backbone_features import features_file
from gem_lightning.models.white_balance import BORDER_SHARE, white_balanced
from tests.helpers.configs import composed_model

SIDE = 56  # a band of 4 px


def _stone_on(background: tuple[float, float, float], count: int = 2) -> torch.Tensor:
    """(count, 3, SIDE, SIDE) photos: a random coloured stone filling the middle of a plain ``background``."""
    generator = torch.Generator().manual_seed(0)
    photos = torch.tensor(background).view(1, 3, 1, 1).repeat(count, 1, SIDE, SIDE)
    band = round(SIDE * BORDER_SHARE)
    photos[..., band:-band, band:-band] = 0.7 * torch.rand(
        count, 3, SIDE - 2 * band, SIDE - 2 * band, generator=generator
    )
    return photos


def test_the_border_rule_greys_the_background_at_its_own_brightness():
    photos = _stone_on((0.6, 0.45, 0.3))
    balanced = white_balanced(photos, "border")
    corner = balanced[:, :, 0, 0]
    assert torch.allclose(corner, torch.full_like(corner, 0.45), atol=1e-6)
    # The stone is scaled by the same gains, channel by channel.
    gains = torch.tensor([0.45 / 0.6, 1.0, 0.45 / 0.3]).view(1, 3, 1, 1)
    assert torch.allclose(balanced[..., 20:30, 20:30], (photos[..., 20:30, 20:30] * gains).clamp(0, 1), atol=1e-6)


def test_grey_world_greys_the_whole_photo():
    balanced = white_balanced(_stone_on((0.6, 0.45, 0.3)), "grey_world")
    means = balanced.mean(dim=(2, 3))
    assert torch.allclose(means, means.mean(dim=1, keepdim=True).expand_as(means), atol=1e-3)


def test_a_black_background_changes_nothing():
    """Below 8/255 a channel of the band carries no light colour: JPEG noise on black must not recolour the stone."""
    photos = _stone_on((0.02, 0.005, 0.0))
    assert torch.equal(white_balanced(photos, "border"), photos)
    assert white_balanced(photos, "none") is photos


def _cast(photos: torch.Tensor) -> torch.Tensor:
    """``photos`` under a warm light: red up, blue down, the band's mean brightness kept (0.4 before and after)."""
    light = torch.tensor([1.2, 1.0, 0.8])
    light = light * 0.4 / float((torch.tensor([0.5, 0.4, 0.3]) * light).mean())
    return photos * light.view(1, 3, 1, 1)


def test_a_colour_cast_is_undone():
    photos = _stone_on((0.5, 0.4, 0.3))
    assert torch.allclose(white_balanced(_cast(photos), "border"), white_balanced(photos, "border"), atol=1e-6)


def test_the_classifier_balances_what_its_network_sees(tmp_path):
    """``features`` is every path's way in (training steps, the predictor, Grad-CAM, cached features, export), so
    the photo and the photo under a cast reach the backbone alike with the border rule, and apart without it."""
    model = composed_model(["a", "b"], tmp_path, ["model.white_balance=border", "data.image_size=56"]).eval()
    assert model.hparams.white_balance == "border"
    photos = _stone_on((0.5, 0.4, 0.3))
    with torch.inference_mode():
        assert torch.allclose(model.features(_cast(photos)), model.features(photos), atol=1e-5)
        model.hparams.white_balance = "none"
        assert not torch.allclose(model.features(_cast(photos)), model.features(photos), atol=1e-2)


def test_cached_features_of_a_balanced_model_have_their_own_file(tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), (200, 100, 50)).save(photo)
    images = evaluation_dataset([(photo, 0)], 8)
    model = composed_model(["a", "b"], tmp_path, ["data.image_size=8"])
    plain = features_file(model, images, tmp_path, "32-true")
    model.hparams.white_balance = "border"
    assert features_file(model, images, tmp_path, "32-true") != plain


@pytest.mark.parametrize("rule", ["border", "grey_world"])
def test_balanced_photos_stay_in_range(rule):
    photos = _stone_on((0.9, 0.2, 0.05)) * 1.1
    balanced = white_balanced(photos.clamp(0, 1), rule)
    assert balanced.min() >= 0 and balanced.max() <= 1
