"""Duplicate groups, duplicate-aware splits, label conflicts, leak marking and the data report."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gem_lightning.data.duplicates import find_duplicate_groups
from gem_lightning.data.report import CONTACT_SHEET_NAME
from gem_lightning.data.scan import scan_dataset
from gem_lightning.data.splits import plan_splits, read_manifest
from gem_lightning.errors import GemLightningError
from gem_lightning.training.run import train
from tests.helpers.configs import TINY_DEMO, compose_config, folder_datamodule
from tests.helpers.workplace import GEMSTONES_DIR, needs_shared


def _gem_photo(seed: int, size: int = 48) -> Image.Image:
    """A smooth, photo-like image (noise would not survive JPEG re-encoding as 'the same picture')."""
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, 256, (2, 2, 3)).astype(np.uint8)
    return Image.fromarray(corners, "RGB").resize((size, size), Image.Resampling.BILINEAR)


def _jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _folder_with_duplicates(root: Path, layout: str = "flat") -> dict[str, list[str]]:
    """20 distinct photos per class, plus known duplicates; returns the expected groups by name."""

    def place(label: str, name: str, origin: str = "") -> Path:
        folder = root / (origin if layout == "split_folders" else "") / label
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    for class_index, label in enumerate(("Beryl Golden", "Quartz Lemon", "Citrine")):
        for i in range(20):
            origin = "test" if i < 4 else "train"
            place(label, f"{i}.jpg", origin).write_bytes(_jpeg_bytes(_gem_photo(100 * class_index + i), 95))
    same = _gem_photo(9001)
    # Three byte-identical copies within one class.
    for name in ("copy_a.jpg", "copy_b.jpg", "copy_c.jpg"):
        place("Citrine", name, "train").write_bytes(_jpeg_bytes(same, 95))
    # A re-encoded copy and a copy whose pixels were turned a quarter: near-duplicates of one photo.
    other = _gem_photo(9002)
    place("Beryl Golden", "seller.jpg", "train").write_bytes(_jpeg_bytes(other, 95))
    place("Beryl Golden", "seller_recompressed.jpg", "test").write_bytes(_jpeg_bytes(other, 80))
    place("Beryl Golden", "seller_turned.jpg", "train").write_bytes(
        _jpeg_bytes(other.transpose(Image.Transpose.ROTATE_90), 95)
    )
    # The same bytes under two classes: a label conflict.
    conflict = _jpeg_bytes(_gem_photo(9003), 95)
    place("Beryl Golden", "conflict.jpg", "train").write_bytes(conflict)
    place("Quartz Lemon", "conflict.jpg", "test").write_bytes(conflict)
    prefix = {"flat": lambda o: "", "split_folders": lambda o: f"{o}/"}[layout]
    return {
        "exact": [f"{prefix('train')}Citrine/copy_{c}.jpg" for c in "abc"],
        "near": [
            f"{prefix('train')}Beryl Golden/seller.jpg",
            f"{prefix('test')}Beryl Golden/seller_recompressed.jpg",
            f"{prefix('train')}Beryl Golden/seller_turned.jpg",
        ],
        "conflict": [f"{prefix('train')}Beryl Golden/conflict.jpg", f"{prefix('test')}Quartz Lemon/conflict.jpg"],
    }


def _groups_by_members(report) -> dict[tuple[str, ...], object]:
    return {tuple(sorted(m.path for m in g.members)): g for g in report.groups}


def test_exact_near_and_conflicting_duplicates_are_grouped(tmp_path):
    expected = _folder_with_duplicates(tmp_path / "gems")
    scan = scan_dataset(tmp_path / "gems", tmp_path / "cache", 10**8)
    report = find_duplicate_groups(scan, tmp_path / "cache")
    groups = _groups_by_members(report)
    assert set(groups) == {tuple(sorted(v)) for v in expected.values()}
    assert groups[tuple(sorted(expected["exact"]))].kind == "exact"
    assert groups[tuple(sorted(expected["near"]))].kind == "near"
    [conflict] = report.conflicts
    assert conflict.labels == ("Beryl Golden", "Quartz Lemon")
    # Exact duplicates only: the near group disappears, the others stay.
    exact_only = find_duplicate_groups(scan, tmp_path / "cache", threshold=None)
    assert len(exact_only.groups) == 2


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_pooled_splits_never_split_a_duplicate_group(tmp_path, seed):
    expected = _folder_with_duplicates(tmp_path / "gems")
    scan = scan_dataset(tmp_path / "gems", tmp_path / "cache", 10**8)
    duplicates = find_duplicate_groups(scan, tmp_path / "cache")
    plan = plan_splits(scan, "pooled", seed, 0.15, 0.15, duplicates=duplicates, conflict_policy="keep")
    for group in duplicates.groups:
        assert len({plan.assignment[m.path] for m in group.members}) == 1, group
    dropped = plan_splits(scan, "pooled", seed, 0.15, 0.15, duplicates=duplicates, conflict_policy="drop")
    assert set(dropped.excluded) == set(expected["conflict"])
    assert not set(dropped.assignment) & set(expected["conflict"])
    assert "label conflict" in dropped.excluded[expected["conflict"][0]]


def test_predefined_split_marks_test_images_that_duplicate_train_images(tmp_path):
    expected = _folder_with_duplicates(tmp_path / "gems", layout="split_folders")
    datamodule = folder_datamodule(tmp_path / "gems", tmp_path, ["data.split=predefined"])
    datamodule.prepare_data()
    datamodule.setup()
    leaked = "test/Beryl Golden/seller_recompressed.jpg"
    assert set(datamodule.prepared.plan.leaked) == {leaked}
    copies = {"train/Beryl Golden/seller.jpg", "train/Beryl Golden/seller_turned.jpg"}
    assert set(datamodule.prepared.plan.leaked[leaked]) == copies
    rows = {row["path"]: row for row in read_manifest(datamodule.prepared.manifest_file)}
    assert rows[leaked]["split"] == "test" and rows[leaked]["note"].startswith("leak: duplicates train image(s)")
    assert rows[leaked]["duplicate_group"] == rows["train/Beryl Golden/seller.jpg"]["duplicate_group"] != ""
    for path in expected["conflict"]:
        assert rows[path]["split"] == "excluded" and "label conflict" in rows[path]["note"]
    test_set = datamodule.datasets["test"]
    flags = [test_set[i][2] for i in range(len(test_set))]
    assert sum(flags) == 1 and len(flags) == 3 * 4 + 1  # 4 per class + the recompressed copy; conflict dropped

    report = json.loads(datamodule.prepared.report_file.read_text())
    assert report["leaked_test_images"] == {leaked: sorted(datamodule.prepared.plan.leaked[leaked])}
    assert report["label_conflicts"]["groups"][0]["where"] == "across test/train"
    assert report["duplicates"]["test_images_duplicating_train"] == sorted([leaked, expected["conflict"][1]])
    assert report["images"]["test"] == len(test_set)
    with Image.open(datamodule.prepared.report_file.parent / CONTACT_SHEET_NAME) as sheet:
        assert sheet.format == "PNG" and sheet.width > 300


def test_an_unknown_conflict_policy_is_rejected(tmp_path):
    _folder_with_duplicates(tmp_path / "gems")
    scan = scan_dataset(tmp_path / "gems", tmp_path / "cache", 10**8)
    with pytest.raises(GemLightningError, match="data.label_conflicts"):
        plan_splits(scan, "pooled", 0, 0.15, 0.15, conflict_policy="vote")


def test_a_run_reports_raw_and_leak_free_test_accuracy(tmp_path):
    _folder_with_duplicates(tmp_path / "gems", layout="split_folders")
    # The tiny demo's training settings, on this folder instead of the demo set.
    overrides = [o for o in TINY_DEMO if not o.startswith(("experiment=", "data.demo."))]
    cfg = compose_config(
        [*overrides, f"data.root={tmp_path / 'gems'}", "data.split=predefined", "model.pretrained=false"], tmp_path
    )
    metrics = train(cfg).metrics
    assert metrics["test_leak_free/leaked_images_left_out"] == 1.0
    assert "test_leak_free/acc" in metrics and "test/acc" in metrics  # their values: checked against the report below
    run_dir = Path(cfg.paths.output_dir)
    report = json.loads((run_dir / "data_report.json").read_text())
    assert list(report["leaked_test_images"]) == ["test/Beryl Golden/seller_recompressed.jpg"]
    assert (run_dir / CONTACT_SHEET_NAME).is_file() and (run_dir / "split_manifest.csv").is_file()
    # The evaluation report gives both figures too, and they agree with the logged ones.
    summary = json.loads((run_dir / "evaluation" / "test" / "evaluation.json").read_text())["summary"]
    assert summary["leaked_images"] == 1
    assert summary["top1"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert summary["top1_leak_free"] == pytest.approx(metrics["test_leak_free/acc"], abs=1e-6)
    assert "leak-free" in (run_dir / "evaluation" / "test" / "report.md").read_text()


@needs_shared(GEMSTONES_DIR)
def test_the_kaggle_set_duplicates_conflicts_and_leaks_are_found(tmp_path):
    scan = scan_dataset(GEMSTONES_DIR, tmp_path / "cache", 50_000_000)
    duplicates = find_duplicate_groups(scan, tmp_path / "cache")
    exact = [g for g in duplicates.groups if g.kind == "exact"]
    # SOURCE.md: byte-identical test/train pairs (one of them under two different classes).
    identical_across = {
        m.path for g in exact for m in g.members if m.origin == "test" and any(x.origin == "train" for x in g.members)
    }
    assert identical_across == {
        "test/Andradite/andradite_18.jpg",
        "test/Danburite/danburite_18.jpg",
        "test/Fluorite/fluorite_3.jpg",
        "test/Hessonite/hessonite_18.jpg",
    }
    exact_conflicts = [g for g in duplicates.conflicts if g.kind == "exact"]
    assert all(g.labels == ("Garnet Red", "Hessonite") for g in exact_conflicts)
    within_train = [g for g in exact_conflicts if {m.origin for m in g.members} == {"train"}]
    across = [g for g in exact_conflicts if {m.origin for m in g.members} == {"train", "test"}]
    assert (len(within_train), len(across)) == (3, 1)
    leaking = {m.path for g in duplicates.groups if any(x.origin == "train" for x in g.members) for m in g.members}
    leaking_test = {path for path in leaking if path.startswith("test/")}
    # README.md's figures, exactly: 16 exact + 49 near groups holding 166 files; 16 test images leak.
    kinds = [g.kind for g in duplicates.groups]
    assert (kinds.count("exact"), len(kinds) - kinds.count("exact")) == (16, 49)
    assert sum(len(g.members) for g in duplicates.groups) == 166
    assert len(leaking_test) == 16, sorted(leaking_test)
    assert identical_across <= leaking_test

    plan = plan_splits(scan, "pooled", 42, 0.15, 0.15, duplicates=duplicates)
    for group in duplicates.groups:
        assert len({plan.assignment.get(m.path, "excluded") for m in group.members}) == 1, group.id
    predefined = plan_splits(scan, "predefined", 42, 0.15, 0.15, duplicates=duplicates)
    # The conflicting copy (test/Hessonite/hessonite_18.jpg) is dropped, not counted as a leak.
    assert set(predefined.leaked) == leaking_test - {"test/Hessonite/hessonite_18.jpg"}


def test_copies_of_the_same_folder_give_the_same_groups(tmp_path):
    _folder_with_duplicates(tmp_path / "gems")
    shutil.copytree(tmp_path / "gems", tmp_path / "copy")
    first = find_duplicate_groups(scan_dataset(tmp_path / "gems", tmp_path / "c1", 10**8), tmp_path / "c1")
    second = find_duplicate_groups(scan_dataset(tmp_path / "copy", tmp_path / "c2", 10**8), tmp_path / "c2")
    assert [[m.path for m in g.members] for g in first.groups] == [[m.path for m in g.members] for g in second.groups]
