"""Scanning real-world folders (bad files included), stratified splits and their manifest."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gem_lightning.data.image_files import load_rgb
from gem_lightning.data.scan import scan_dataset
from gem_lightning.data.splits import plan_splits, read_manifest
from gem_lightning.errors import GemLightningError
from tests.helpers.configs import folder_datamodule
from tests.helpers.workplace import GEMSTONES_DIR, needs_shared


def _photo(seed: int, size=(40, 30), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").convert(mode)


def _write_messy_folder(root: Path) -> dict[str, str]:
    """A flat folder with one good image per kind of trouble; returns file -> expected outcome."""
    (root / "Beryl Golden").mkdir(parents=True)
    (root / "Quartz Lemon").mkdir(parents=True)
    gold, lemon = root / "Beryl Golden", root / "Quartz Lemon"
    for i in range(10):
        _photo(i).save(gold / f"good_{i}.jpg")
        _photo(100 + i).save(lemon / f"good_{i}.jpg")
    _photo(1, mode="RGBA").save(gold / "png_named.jpg", format="PNG")
    _photo(2, mode="L").save(gold / "gray.jpg")
    _photo(3, mode="CMYK").save(gold / "cmyk.jpg")
    _photo(4).convert("P").save(gold / "palette.png")
    Image.fromarray(np.full((20, 30), 40000, dtype=np.uint16)).save(gold / "sixteen_bit.png")
    rotated = _photo(5, size=(40, 20))
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    rotated.save(lemon / "exif_rotated.jpg", exif=exif)
    good_bytes = (gold / "good_0.jpg").read_bytes()
    (lemon / "truncated.jpg").write_bytes(good_bytes[: len(good_bytes) // 3])
    (lemon / "empty.jpg").write_bytes(b"")
    (lemon / "notes.txt").write_text("not an image")  # no image extension: not a photo, not even "skipped"
    _photo(6, size=(200, 200)).save(lemon / "huge.jpg")
    (lemon / ".DS_Store").write_bytes(b"\0\0")
    return {
        "Beryl Golden/png_named.jpg": "",
        "Beryl Golden/gray.jpg": "",
        "Beryl Golden/cmyk.jpg": "",
        "Beryl Golden/palette.png": "",
        "Beryl Golden/sixteen_bit.png": "",
        "Quartz Lemon/exif_rotated.jpg": "",
        "Quartz Lemon/truncated.jpg": "cannot decode",
        "Quartz Lemon/empty.jpg": "empty file",
        "Quartz Lemon/huge.jpg": "over the limit",
    }


def _sha256s(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_bad_files_are_skipped_listed_and_never_touched(tmp_path, caplog):
    root = tmp_path / "gems"
    expected = _write_messy_folder(root)
    before = _sha256s(root)
    with caplog.at_level(logging.WARNING):
        scan = scan_dataset(root, tmp_path / "cache", max_pixels=100 * 100)
        scan.log_skipped()
    by_path = {f.path: f for f in scan.files}
    assert scan.class_names == ("Beryl Golden", "Quartz Lemon")
    assert ".DS_Store" not in " ".join(by_path)
    for path, reason in expected.items():
        assert reason in by_path[path].skip_reason if reason else by_path[path].usable, path
    assert len(scan.skipped) == 3 and len(scan.usable) == 26  # notes.txt is not among them
    log_line = next(r.getMessage() for r in caplog.records if "skipped 3 unusable" in r.getMessage())
    assert "Quartz Lemon/truncated.jpg" in log_line and "Quartz Lemon/empty.jpg" in log_line
    rotated = by_path["Quartz Lemon/exif_rotated.jpg"]
    assert (rotated.width, rotated.height) == (20, 40)  # upright: width and height swapped
    assert _sha256s(root) == before


def test_every_usable_file_loads_as_upright_rgb(tmp_path):
    root = tmp_path / "gems"
    _write_messy_folder(root)
    scan = scan_dataset(root, tmp_path / "cache", max_pixels=100 * 100)
    for item in scan.usable:
        image = load_rgb(root / item.path)
        assert image.mode == "RGB" and image.size == (item.width, item.height)
    sixteen = np.asarray(load_rgb(root / "Beryl Golden/sixteen_bit.png"))
    assert 150 < sixteen.mean() < 160  # 40000 / 65535 of full scale, not clipped to white
    transparent = np.asarray(load_rgb(root / "Beryl Golden/png_named.jpg"))
    assert transparent.shape == (30, 40, 3)


def test_a_second_scan_reads_the_cache_and_sees_changes(tmp_path, caplog):
    root = tmp_path / "gems"
    _write_messy_folder(root)
    scan_dataset(root, tmp_path / "cache", max_pixels=10_000)
    with caplog.at_level(logging.INFO):
        scan_dataset(root, tmp_path / "cache", max_pixels=10_000)
    assert not any("checking" in r.getMessage() for r in caplog.records)
    _photo(77).save(root / "Quartz Lemon" / "new.jpg")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        scan = scan_dataset(root, tmp_path / "cache", max_pixels=10_000)
    assert any("checking 1 of" in r.getMessage() for r in caplog.records)
    assert "Quartz Lemon/new.jpg" in {f.path for f in scan.usable}


def _balanced_folder(root: Path, counts: dict[str, int], layout: str = "flat") -> None:
    """Distinct random-noise images (no two alike, so no duplicate groups) per class."""
    for class_index, (label, count) in enumerate(counts.items()):
        for i in range(count):
            origin = ("train" if i % 5 else "test") if layout == "split_folders" else ""
            folder = root / origin / label
            folder.mkdir(parents=True, exist_ok=True)
            _photo(1000 * class_index + i, size=(12, 12)).save(folder / f"{i}.png")


def test_pooled_split_is_stratified_70_15_15_per_class(tmp_path):
    counts = {"Alexandrite": 40, "Beryl Golden": 27, "Cats Eye": 33}
    _balanced_folder(tmp_path / "gems", counts)
    datamodule = folder_datamodule(tmp_path / "gems", tmp_path)
    datamodule.prepare_data()
    datamodule.setup()
    split_counts = datamodule.split_counts()
    for label, total in counts.items():
        per_split = {name: split_counts[name][label] for name in ("train", "val", "test")}
        assert sum(per_split.values()) == total
        assert per_split["val"] == per_split["test"] == round(total * 0.15 + 1e-9)
    x, y = datamodule.datasets["train"][0]
    assert x.dtype == torch.uint8 and x.shape == (3, 16, 16) and 0 <= y < 3


def test_same_data_and_seed_give_the_same_manifest_bytes(tmp_path):
    _balanced_folder(tmp_path / "gems", {"A": 20, "B": 20})
    first = folder_datamodule(tmp_path / "gems", tmp_path / "w1")
    second = folder_datamodule(tmp_path / "gems", tmp_path / "w2")
    other_seed = folder_datamodule(tmp_path / "gems", tmp_path / "w3", ["data.split_seed=7"])
    for datamodule in (first, second, other_seed):
        datamodule.prepare_data()
    assert first.prepared.manifest_file.read_bytes() == second.prepared.manifest_file.read_bytes()
    assert first.prepared.manifest_file.read_bytes() != other_seed.prepared.manifest_file.read_bytes()
    rows = read_manifest(first.prepared.manifest_file)
    assert list(rows[0]) == ["path", "class", "split", "sha256", "duplicate_group", "note"]
    assert all(len(r["sha256"]) == 64 for r in rows)


def test_a_changed_folder_is_detected_and_the_manifest_rewritten(tmp_path, caplog):
    root = tmp_path / "gems"
    _balanced_folder(root, {"A": 20, "B": 20})
    datamodule = folder_datamodule(root, tmp_path)
    datamodule.prepare_data()
    before = datamodule.prepared.manifest_file.read_bytes()
    (root / "A" / "3.png").unlink()
    with caplog.at_level(logging.WARNING):
        folder_datamodule(root, tmp_path).prepare_data()
    assert any("changed since" in r.getMessage() for r in caplog.records)
    assert datamodule.prepared.manifest_file.read_bytes() != before


def test_skipped_files_are_in_the_manifest_and_one_log_line(tmp_path, caplog):
    root = tmp_path / "gems"
    _balanced_folder(root, {"A": 10, "B": 10})
    (root / "A" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    datamodule = folder_datamodule(root, tmp_path)
    with caplog.at_level(logging.WARNING):
        datamodule.prepare_data()
        datamodule.setup("fit")
    assert [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()] == [
        f"skipped 1 unusable file(s) under {root}: A/broken.jpg (cannot decode: cannot identify image file "
        f"'{root}/A/broken.jpg')"
    ]
    rows = {r["path"]: r for r in read_manifest(datamodule.prepared.manifest_file)}
    assert rows["A/broken.jpg"]["split"] == "skipped" and "cannot decode" in rows["A/broken.jpg"]["note"]


def test_predefined_split_keeps_the_folders_test_set(tmp_path):
    root = tmp_path / "gems"
    _balanced_folder(root, {"A": 30, "B": 25}, layout="split_folders")
    scan = scan_dataset(root, tmp_path / "cache", max_pixels=10_000)
    assignment = plan_splits(scan, "predefined", seed=1, val_fraction=0.15, test_fraction=0.15).assignment
    for item in scan.usable:
        assert (assignment[item.path] == "test") == (item.origin == "test")
    val = Counter(scan_item.label for scan_item in scan.usable if assignment[scan_item.path] == "val")
    assert val == {"A": round(24 * 0.15), "B": round(20 * 0.15)}


def test_predefined_split_on_a_flat_folder_says_what_to_do(tmp_path):
    _balanced_folder(tmp_path / "gems", {"A": 10, "B": 10})
    scan = scan_dataset(tmp_path / "gems", tmp_path / "cache", max_pixels=10_000)
    with pytest.raises(GemLightningError, match="data.split=pooled"):
        plan_splits(scan, "predefined", 0, 0.15, 0.15)


def test_a_missing_data_folder_names_it_and_the_key(tmp_path):
    with pytest.raises(GemLightningError, match=r"data folder not found: .*nowhere.*data.root"):
        folder_datamodule(tmp_path / "nowhere", tmp_path).prepare_data()


@needs_shared(GEMSTONES_DIR)
def test_the_real_kaggle_folder_scans_cleanly(tmp_path):
    scan = scan_dataset(GEMSTONES_DIR, tmp_path / "cache", max_pixels=50_000_000)
    assert scan.layout == "split_folders" and len(scan.class_names) == 87
    assert Counter(f.origin for f in scan.usable) == {"train": 2856, "test": 363}
    assert not scan.skipped
    assert "Aventurine Green" in scan.class_names  # folder names with spaces are class names as they are
    for png_named_jpg in ("train/Almandine/almandine_21.jpg", "train/Zoisite/zoisite_21.jpg"):
        assert load_rgb(GEMSTONES_DIR / png_named_jpg).mode == "RGB"
