"""The batched device augmentation against the loader's per-image policy: same pixels for the same draw, same
distribution of outputs for a batch (seeded statistics, not pixels)."""

from __future__ import annotations

import hydra
import pytest
import torch
from scipy.stats import ks_2samp

from gem_lightning.data.batch_augmentation import BatchAugmentation
from gem_lightning.data.image_arrays import stored_side
from tests.helpers.configs import compose_config

SIZE = 64  # data.image_size: the policies crop stored squares of stored_side(64) = 82 px
POLICIES = ("seed", "colour_preserving", "colour_jitter", "colour_safe_auto")


def _policy(name: str, tmp_path):
    return hydra.utils.instantiate(
        compose_config([f"augment={name}", f"data.image_size={SIZE}"], tmp_path).augment.train
    )


def _stone() -> torch.Tensor:
    """A stored square: an off-centre red stone with a yellow facet on black, and a blue gradient band."""
    side = stored_side(SIZE)
    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    image = torch.zeros(3, side, side, dtype=torch.uint8)
    stone = (x - 30) ** 2 + (y - 36) ** 2 < 18**2
    image[0][stone] = 210
    image[1][stone & (x > 34)] = 180
    image[2][y > 64] = (x[y > 64] * 3).clamp(max=255).to(torch.uint8)
    return image


@pytest.mark.parametrize("name", POLICIES)
def test_one_image_drawn_alike_gives_the_loaders_pixels(name, tmp_path):
    # The same seed makes the same draws (torchvision's make_params, in the policy's order): only the
    # interpolation differs (one bilinear resampling against nearest rotation + antialiased resize).
    policy = _policy(name, tmp_path)
    batched, image = BatchAugmentation(policy), _stone()
    for seed in range(12):
        torch.manual_seed(seed)
        expected = policy(image)
        torch.manual_seed(seed)
        (got,) = batched(image[None])
        assert got.dtype == torch.uint8 and got.shape == expected.shape == (3, SIZE, SIZE)
        difference = (got.float() - expected.float()).abs().mean().item()
        assert difference < 4.0, (seed, difference)  # grey levels of 255, averaged over the image


def _statistics(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image: mean brightness, black share, where the red stone is (its centroid) and how large it looks."""
    red = images[:, 0].float()
    mass = red.sum(dim=(1, 2)).clamp(min=1)
    coordinates = torch.arange(images.shape[-1], dtype=torch.float32)
    return {
        "brightness": images.float().mean(dim=(1, 2, 3)),
        "black": (images.amax(dim=1) < 8).float().mean(dim=(1, 2)),
        "stone_x": (red.sum(dim=1) * coordinates).sum(1) / mass,
        "stone_y": (red.sum(dim=2) * coordinates).sum(1) / mass,
        "stone_area": (red > 100).float().mean(dim=(1, 2)),
    }


@pytest.mark.parametrize("name", ["seed", "colour_preserving"])
def test_a_batch_has_the_loaders_distribution(name, tmp_path):
    policy, count = _policy(name, tmp_path), 600
    images = _stone()[None].expand(count, -1, -1, -1)
    torch.manual_seed(0)
    loader = torch.stack([policy(image) for image in images])
    torch.manual_seed(1)  # other draws: only the distribution is compared
    device = BatchAugmentation(policy)(images)
    for statistic, expected in _statistics(loader).items():
        got = _statistics(device)[statistic]
        p_value = ks_2samp(expected.numpy(), got.numpy()).pvalue
        assert p_value > 0.01, (statistic, p_value, expected.mean().item(), got.mean().item())


def test_what_is_batched_and_what_is_not(tmp_path):
    whole = BatchAugmentation(_policy("colour_preserving", tmp_path)).describe()
    assert whole.endswith("ColorJitter; image by image: nothing")
    # Hue and saturation, and a random choice per image, are left to torchvision image by image.
    assert BatchAugmentation(_policy("colour_jitter", tmp_path)).describe().endswith("image by image: ColorJitter")
    assert BatchAugmentation(_policy("colour_safe_auto", tmp_path)).describe().endswith("by image: RandomChoice")
