"""background_swap: training photos on random backgrounds, from cached rembg masks of the training squares."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from gem_lightning.data.background.swap import BACKGROUND_KINDS, BackgroundSwap
from gem_lightning.data.image_arrays import stored_image
from gem_lightning.data.image_dataset import GemImageDataset
from gem_lightning.errors import find_user_error
from tests.helpers.configs import TINY_DEMO, compose_config
from tests.helpers.train_command import run_train, the_one_error_line
from tests.helpers.workplace import U2NET_DIR, needs_shared


def _stone_in_the_middle(side: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """A textured uint8 photo and a mask: stone (255) in the centre, background (0) around, a soft edge."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, side, side), dtype=torch.uint8, generator=generator)
    mask = torch.zeros(side, side, dtype=torch.uint8)
    mask[10:30, 10:30] = 255
    mask[9, 10:30] = 128
    return image, mask


@pytest.mark.parametrize("kind", list(BACKGROUND_KINDS))
def test_a_swap_keeps_the_stone_and_paints_everything_else(kind):
    image, mask = _stone_in_the_middle()
    torch.manual_seed(1)
    swapped = BackgroundSwap(probability=1.0, kinds=[kind])(image, mask)
    assert swapped.dtype == torch.uint8 and swapped.shape == image.shape
    stone, background = mask == 255, mask == 0
    assert torch.equal(swapped[:, stone], image[:, stone])
    assert (swapped[:, background] != image[:, background]).float().mean() > 0.9
    painted = swapped[:, background].float()
    if kind != "plain":
        assert painted.std(dim=1).max() > 3, f"a {kind} background varies"
        return
    assert painted.std(dim=1).max() == 0, "a plain background is one colour"
    # The soft edge (mask 128) is the blend of stone and background by the mask's weight.
    colour = swapped[:, 0, 0].float()[:, None]
    expected = image[:, 9, 10:30].float() * 128 / 255 + colour * 127 / 255
    assert (swapped[:, 9, 10:30].float() - expected).abs().max() <= 1  # both sides rounded to whole levels


def test_probability_is_the_share_of_photos_swapped_and_zero_turns_it_off():
    image, mask = _stone_in_the_middle()
    torch.manual_seed(0)
    swap = BackgroundSwap(probability=0.5)
    changed = sum(not torch.equal(swap(image, mask), image) for _ in range(400))
    assert 160 < changed < 240
    off = BackgroundSwap(probability=0.0)
    assert not off.enabled and all(torch.equal(off(image, mask), image) for _ in range(20))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "background_swap.kinds=[plain,stripes]",
            "background_swap.kinds=['plain', 'stripes']: use one or more of plain, gradient, noise",
        ),
        ("background_swap.probability=1.5", "background_swap.probability=1.5: use a value from 0 to 1"),
        ("background_swap.mask_model=u3net", "background_swap.mask_model='u3net' is not a local rembg model"),
    ],
)
def test_bad_settings_are_one_line_naming_the_key(tmp_path, override, message):
    cfg = compose_config(["background_swap=random", override], tmp_path)
    with pytest.raises(Exception) as raised:  # Hydra wraps it; train.py prints the user error inside
        instantiate(cfg.background_swap)
    assert str(find_user_error(raised.value)).startswith(message)


def test_a_missing_mask_model_stops_train_py_with_one_line(tmp_path):
    result = run_train(
        "background_swap=random", f"paths.root_dir={tmp_path}", env={"U2NET_HOME": str(tmp_path / "models")}
    )
    line = the_one_error_line(result)
    assert "u2netp.onnx" in line and str(tmp_path / "models") in line and "background_swap.mask_model=" in line
    assert not list((tmp_path / "cache").rglob("*-mask-*.npy")), "nothing is computed before the check"


@needs_shared(U2NET_DIR / "u2netp.onnx")
def test_training_swaps_backgrounds_with_cached_masks_of_its_own_squares(tmp_path, monkeypatch):
    from gem_lightning.training.run import train

    monkeypatch.setenv("U2NET_HOME", str(U2NET_DIR))
    # 6 photos a class, 60 masks: u2netp takes about 0.5 s a photo on one core here.
    # The masks and what the swap paints are checked here, not the run's calibration report or label audit.
    demo = [*TINY_DEMO, "data.demo.images_per_class=6", "background_swap=random", "evaluate=false", "label_audit=none"]
    cfg = compose_config(demo, tmp_path)
    result = train(cfg)
    metrics = result.metrics
    assert np.isfinite(metrics["val/acc"])
    datamodule = result.datamodule
    training = datamodule.datasets["train"]
    assert training.background_swap is datamodule.background_swap and training.masks == datamodule.mask_array
    assert all(datamodule.datasets[name].background_swap is None for name in ("val", "test"))

    masks = np.load(datamodule.mask_array, mmap_mode="r")
    side = datamodule.training_side
    assert masks.shape == (len(datamodule.prepared.items), side, side) and side == training.side
    # Row i is the mask of item i's own training square (the one the swap paints), as rembg computes it.
    backend = datamodule.background_swap.mask_backend
    for row in (0, len(datamodule.prepared.items) - 1):
        square = stored_image(datamodule.prepared.items[row].image_file, side).permute(1, 2, 0).numpy()
        assert np.array_equal(masks[row], backend.mask(Image.fromarray(square)))
    kept = (masks >= 128).mean(axis=(1, 2))
    assert np.median(kept) > 0.05 and np.median(kept) < 0.9, "u2netp finds the demo stones"

    # Served through the dataset, without the policy: the stone is the stored square's, the rest one colour.
    plain = BackgroundSwap(probability=1.0, kinds=["plain"])
    served = GemImageDataset(
        training.items,
        None,
        side,
        array=training.array,
        rows=training.rows,
        masks=training.masks,
        background_swap=plain,
    )
    images, _ = served.__getitems__(list(range(8)))
    for index, image in enumerate(images):
        original = training.stored_image(index)
        mask = torch.from_numpy(np.array(masks[training.rows[index]]))
        assert torch.equal(image[:, mask == 255], original[:, mask == 255])
        assert image[:, mask == 0].float().std(dim=1).max() == 0

    # A second run finds the masks cached: same file, not rewritten.
    written = os.stat(datamodule.mask_array).st_mtime_ns
    cfg = compose_config([*demo, "train=false", "test=false", "evaluate=false"], tmp_path)
    result = train(cfg)
    result.datamodule.setup()
    assert result.datamodule.mask_array == datamodule.mask_array
    assert os.stat(datamodule.mask_array).st_mtime_ns == written


@needs_shared(U2NET_DIR / "u2netp.onnx")
def test_a_photo_the_mask_model_cannot_read_is_one_line_naming_the_mask(tmp_path, monkeypatch):
    from gem_lightning.data.background.backends import RembgBackend
    from gem_lightning.data.image_arrays import build_mask_array
    from gem_lightning.errors import GemLightningError

    monkeypatch.setenv("U2NET_HOME", str(U2NET_DIR))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"changed after the scan: not a jpeg any more")
    backend = RembgBackend("u2netp", setting="background_swap.mask_model")
    with pytest.raises(GemLightningError, match=r"cannot compute the rembg u2netp mask of .*broken\.jpg for back"):
        build_mask_array([broken], 32, tmp_path / "cache", backend, progress=False)


@needs_shared(U2NET_DIR / "u2netp.onnx")
def test_a_head_only_run_computes_no_masks_it_would_not_read(tmp_path, monkeypatch, caplog):
    from gem_lightning.training.run import train

    monkeypatch.setenv("U2NET_HOME", str(U2NET_DIR))
    cfg = compose_config([*TINY_DEMO, "background_swap=random", "model.head_only=true"], tmp_path)
    result = train(cfg)
    metrics = result.metrics
    assert np.isfinite(metrics["val/acc"])
    assert result.datamodule.mask_array is None
    assert not list((tmp_path / "cache").rglob("*-mask-*.npy"))
    assert "background_swap is not applied" in caplog.text
