"""The fast paths of issue 6: the uint8 array cache, cached backbone features, augmentation on the device,
mixed precision and channels_last."""

from __future__ import annotations

import json
import os
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from gem_lightning.data import image_arrays
from gem_lightning.data.demo import DemoGemSet
from gem_lightning.data.image_arrays import array_file, build_image_array, stored_image, stored_side
from gem_lightning.data.image_dataset import GemImageDataset, collate_batch
from gem_lightning.errors import GemLightningError
from gem_lightning.inference.backbone_features import features_file
from gem_lightning.machine.auto_settings import automatic_precision, cpu_has_native_bf16
from gem_lightning.models.classifier import GemClassifier
from gem_lightning.training.run import train
from gem_lightning.training.trainer_factory import build_trainer, resolve_devices
from tests.helpers.configs import TINY_DEMO, compose_config
from tests.helpers.workplace import GEMSTONES_DIR, needs_shared


def _prepared(overrides: list[str], workdir: Path):
    cfg = compose_config([*TINY_DEMO, *overrides], workdir)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def test_cached_squares_equal_decoded_ones_bit_for_bit(tmp_path):
    cached = _prepared([], tmp_path)
    decoded = _prepared(["data.cache_images=false"], tmp_path)
    assert decoded.eval_array is None and decoded.train_array is None
    count = len(cached.prepared.items)
    for array, side in ((cached.eval_array, 32), (cached.train_array, stored_side(32))):
        rows = np.load(array, mmap_mode="r")
        assert rows.shape == (count, side, side, 3) and rows.dtype == np.uint8
    for name, side in (("train", stored_side(32)), ("val", 32), ("test", 32)):
        a, b = cached.datasets[name], decoded.datasets[name]
        assert a.items == b.items and len(a) > 0 and a.side == b.side == side
        for index in range(len(a)):
            # Before augmentation: the square from the array is the one decoded from the file.
            assert torch.equal(a.stored_image(index), b.stored_image(index))
            assert torch.equal(a.stored_image(index), stored_image(a.items[index][0], side))
    for name in ("val", "test"):  # evaluation datasets are deterministic all the way through
        for index in range(len(cached.datasets[name])):
            image_a, label_a, *_ = cached.datasets[name][index]
            image_b, label_b, *_ = decoded.datasets[name][index]
            assert torch.equal(image_a, image_b) and label_a == label_b
            assert image_a.shape == (3, 32, 32) and image_a.dtype == torch.uint8
        # A batch assembled at once (what the loaders fetch) holds the same images, labels and leak flags.
        dataset = cached.datasets[name]
        images, labels, *leaked = collate_batch(dataset.__getitems__(list(range(len(dataset)))))
        assert bool(leaked) == (name == "test")  # only the test split carries the leak flags
        for index in range(len(dataset)):
            image, label, *flag = dataset[index]
            assert torch.equal(images[index], image) and int(labels[index]) == label
            assert [bool(leaked[0][index])] == flag if leaked else not flag


def test_training_without_augmentation_reads_the_evaluation_squares(tmp_path):
    datamodule = _prepared(["augment=none"], tmp_path)
    assert datamodule.train_array is None  # no larger squares are decoded when nothing crops them
    train = datamodule.datasets["train"]
    assert train.array == datamodule.eval_array and train.side == 32 and train.transform is None


@needs_shared(GEMSTONES_DIR)
def test_real_photos_cache_bit_for_bit(tmp_path):
    # The largest photo (3,947 px), the PNGs named .jpg and an ordinary JPEG or two from a few classes.
    largest = max(GEMSTONES_DIR.glob("train/*/*"), key=lambda path: path.stat().st_size)
    png_named_jpg = [p for p in GEMSTONES_DIR.glob("*/*/*.jpg") if p.read_bytes()[:4] == b"\x89PNG"]
    files = [largest, *png_named_jpg, *sorted(GEMSTONES_DIR.glob("test/Zircon/*"))[:3]]
    array = build_image_array(files, 256, tmp_path, num_workers=2, progress=False)
    rows = np.load(array, mmap_mode="r")
    for row, path in enumerate(files):
        assert torch.equal(torch.from_numpy(np.array(rows[row])).permute(2, 0, 1), stored_image(path, 256)), path


def _demo_files(tmp_path: Path) -> list[Path]:
    root = DemoGemSet(images_per_class=4, image_size=40, num_classes=5).render(tmp_path / "demo")
    return sorted(root.glob("*/*.png"))


def test_an_interrupted_build_resumes_where_it_stopped(tmp_path, monkeypatch):
    files = _demo_files(tmp_path)
    fresh = np.load(build_image_array(files, 24, tmp_path / "fresh", progress=False))
    monkeypatch.setattr(image_arrays, "ROWS_PER_RECORD", 4)
    decoded = []
    real = image_arrays.stored_image

    def stopping(path, side):
        if len(decoded) == 13:
            raise KeyboardInterrupt  # as a user's Ctrl-C in the middle
        decoded.append(path)
        return real(path, side)

    monkeypatch.setattr(image_arrays, "stored_image", stopping)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        build_image_array(files, 24, cache, progress=False)
    target = array_file(files, 24, cache)
    assert not target.exists() and target.with_suffix(".partial.npy").exists()
    recorded = json.loads(target.with_suffix(".progress.json").read_text())["done"]
    assert 0 < recorded <= 13

    decoded.clear()
    monkeypatch.setattr(image_arrays, "stored_image", lambda path, side: decoded.append(path) or real(path, side))
    assert build_image_array(files, 24, cache, progress=False) == target
    assert decoded == files[recorded:]  # only what the record did not count is decoded again
    assert np.array_equal(np.load(target), fresh)
    assert not target.with_suffix(".partial.npy").exists() and not target.with_suffix(".progress.json").exists()


def test_a_changed_photo_gets_a_new_array(tmp_path):
    files = _demo_files(tmp_path)
    first = array_file(files, 24, tmp_path)
    os.utime(files[3], ns=(files[3].stat().st_atime_ns, files[3].stat().st_mtime_ns + 10**9))
    assert array_file(files, 24, tmp_path) != first


def test_an_undecodable_file_is_one_clear_error(tmp_path):
    files = _demo_files(tmp_path)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    with pytest.raises(GemLightningError, match=r"cannot decode .*broken\.jpg while caching images"):
        build_image_array([files[0], broken], 24, tmp_path / "cache", progress=False)


class _Batches(Callback):
    """Shapes of what the model's training, validation and test steps receive."""

    def __init__(self):
        self.train, self.val, self.test = [], [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.train.append((tuple(batch[0].shape), batch[0].dtype))

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        self.val.append((tuple(batch[0].shape), batch[0].dtype))

    def on_test_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        self.test.append((tuple(batch[0].shape), batch[0].dtype))


def test_head_only_training_uses_cached_backbone_features(tmp_path, caplog):
    overrides = ["model.head_only=true", "trainer.max_epochs=2", "augment=none", "evaluate=false"]
    cfg = compose_config([*TINY_DEMO, *overrides], tmp_path)
    batches = _Batches()
    result = train(cfg, extra_callbacks=[batches])
    metrics = result.metrics
    model, datamodule = result.model, result.datamodule
    features_dim = model.head[-1].in_features
    seen = batches.train + batches.val + batches.test
    assert batches.train and batches.test and all(shape[1:] == (features_dim,) for shape, _ in seen)

    # The cached rows are the backbone's features of the evaluation images, in the data module's order.
    stored = list((tmp_path / "cache" / "features").glob("*.npy"))
    assert len(stored) == 1
    features = torch.from_numpy(np.load(stored[0]))
    val = datamodule.datasets["val"]
    images = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():  # in float32, whatever the trainer's precision: the evaluation report's numbers
        direct = model.eval().features(images).float()
    assert torch.allclose(features[val.rows], direct, atol=1e-4)
    # The logged test/acc is the best checkpoint's head on the cached test rows, recomputed here.
    test = datamodule.datasets["test"]
    best = GemClassifier.from_checkpoint(result.best_checkpoint).eval()
    with torch.no_grad():
        predicted = best.head(features[test.rows]).argmax(-1)
    labels = torch.tensor([label for _, label in test.items])
    assert metrics["test/acc"] == pytest.approx((predicted == labels).float().mean().item(), abs=1e-6)

    # The backbone never changed, so a second run (a sweep trial) reads the same file instead of computing.
    every = GemImageDataset([(item.image_file, 0) for item in datamodule.prepared.items], None, 32)
    assert features_file(model, every, tmp_path / "cache", "32-true") == stored[0]
    mtime = stored[0].stat().st_mtime_ns
    caplog.set_level("INFO", logger="gem_lightning.inference.backbone_features")
    train(compose_config([*TINY_DEMO, *overrides, "test=false"], tmp_path))
    assert stored[0].stat().st_mtime_ns == mtime and "backbone features from" in caplog.text

    # A test of its own, with no fit before it to compute them, is served the features too.
    on_its_own, batches = hydra.utils.instantiate(cfg.data), _Batches()
    build_trainer(cfg.trainer, callbacks=[batches], logger=False).test(model, datamodule=on_its_own, verbose=False)
    assert batches.test and all(shape[1:] == (features_dim,) for shape, _ in batches.test)


def test_augmentation_on_the_device_gets_stored_squares_and_hands_on_image_size(tmp_path):
    cfg = compose_config([*TINY_DEMO, "data.augment_on=device", "+trainer.fast_dev_run=true"], tmp_path)
    batches = _Batches()
    result = train(cfg, extra_callbacks=[batches])
    datamodule = result.datamodule
    assert datamodule.augment_on_device and datamodule.datasets["train"].transform is None
    raw = next(iter(datamodule.train_dataloader()))[0]
    assert raw.shape[-2:] == (stored_side(32), stored_side(32))  # the loader hands over stored squares
    assert batches.train == [((16, 3, 32, 32), torch.uint8)]  # the model gets augmented 32 px images
    assert batches.val and all(shape[-2:] == (32, 32) for shape, _ in batches.val)


def test_on_a_cpu_augmentation_runs_in_the_loader_and_cache_readers_need_no_processes(tmp_path):
    datamodule = _prepared(["data.num_workers=auto"], tmp_path)
    assert not datamodule.augment_on_device and datamodule.datasets["train"].transform is not None
    assert datamodule.loader_processes(datamodule.datasets["train"]) == datamodule.num_workers >= 1
    assert datamodule.loader_processes(datamodule.datasets["val"]) == 0
    assert datamodule.val_dataloader().num_workers == 0
    explicit = _prepared(["data.num_workers=2"], tmp_path)  # a number is taken as given
    assert explicit.loader_processes(explicit.datasets["val"]) == 2


@pytest.mark.parametrize(("precision", "channels_last"), [("bf16-mixed", True), ("32-true", False), ("auto", True)])
def test_mixed_precision_and_channels_last_train_on_cpu(tmp_path, precision, channels_last):
    overrides = [f"trainer.precision={precision}", f"model.channels_last={str(channels_last).lower()}"]
    cfg = compose_config([*TINY_DEMO, *overrides, "+trainer.fast_dev_run=true"], tmp_path)
    result = train(cfg)
    metrics = result.metrics
    expected = automatic_precision(on_gpu=False) if precision == "auto" else precision
    assert str(result.trainer.precision) == expected
    assert np.isfinite(metrics["test/loss"])
    conv = result.model.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_precision_auto_follows_the_hardware():
    resolved = resolve_devices({"accelerator": "cpu", "devices": 1, "precision": "auto", "benchmark": "auto"})
    assert resolved["precision"] == ("bf16-mixed" if cpu_has_native_bf16() else "32-true")
    assert resolved["benchmark"] is True
    deterministic = resolve_devices({"accelerator": "cpu", "benchmark": "auto", "deterministic": True})
    assert deterministic["benchmark"] is False
    assert resolve_devices({"accelerator": "cpu", "precision": "32-true"})["precision"] == "32-true"
