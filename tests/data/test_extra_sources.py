"""``data.extra_roots``: photos of other sources trained beside the data root's, split per source and class,
duplicates searched across sources, the data root's own split unmoved and nobody's photos touched."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from gem_lightning.data.splits import read_manifest
from gem_lightning.errors import GemLightningError
from gem_lightning.evaluation.checkpoint_evaluation import split_parts
from tests.data.test_duplicates_and_leakage import _folder_with_duplicates, _gem_photo, _jpeg_bytes
from tests.helpers.configs import folder_datamodule


def _shop(root: Path, kaggle: Path) -> dict[str, str]:
    """10 photos a class of two of Kaggle's classes and one class of its own, plus two copies of Kaggle photos
    (one of a test photo, one of a train photo); returns the copies' shop paths -> the Kaggle paths."""
    for class_index, label in enumerate(("Beryl Golden", "Citrine", "Tourmaline")):
        (root / label).mkdir(parents=True)
        for i in range(10):
            (root / label / f"shop{i}.jpg").write_bytes(_jpeg_bytes(_gem_photo(5000 + 100 * class_index + i), 90))
    copies = {"Citrine/of_test.jpg": "test/Citrine/0.jpg", "Citrine/of_train.jpg": "train/Citrine/10.jpg"}
    for name, original in copies.items():
        (root / name).write_bytes((kaggle / original).read_bytes())
    return {f"{root.name}/{name}": original for name, original in copies.items()}


def _digests(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in f.rglob("*") if p.is_file()}


def test_an_extra_source_is_split_per_class_beside_the_data_roots_own_unmoved_split(tmp_path):
    kaggle, shop = tmp_path / "gems", tmp_path / "my-shop"
    _folder_with_duplicates(kaggle, layout="split_folders")
    copies = _shop(shop, kaggle)
    before = _digests(kaggle, shop)
    alone = folder_datamodule(kaggle, tmp_path / "alone", ["data.split=predefined"])
    alone.prepare_data()
    merged = folder_datamodule(kaggle, tmp_path / "merged", ["data.split=predefined", f"data.extra_roots=[{shop}]"])
    merged.prepare_data()
    merged.setup()

    assert merged.class_names == ("Beryl Golden", "Citrine", "Quartz Lemon", "Tourmaline")  # the union
    rows = {row["path"]: row for row in read_manifest(merged.prepared.manifest_file)}
    # Adding a source moves none of the data root's photos: each is where a run without it puts it.
    own = {row["path"]: (row["class"], row["split"]) for row in read_manifest(alone.prepared.manifest_file)}
    assert {path: (row["class"], row["split"]) for path, row in rows.items() if "my-shop/" not in path} == own
    assert merged.prepared.manifest_file.name.startswith("gems-and-1-more-predefined")
    # The shop's 10 photos a class: 2 test, 2 validation, 6 train in each of its classes (not only the root's
    # given test split: its test photos measure the shop).
    shop_rows = [row for path, row in rows.items() if path.startswith("my-shop/") and path not in copies]
    for label in ("Beryl Golden", "Citrine", "Tourmaline"):
        splits = Counter(row["split"] for row in shop_rows if row["class"] == label)
        assert splits == {"train": 6, "val": 2, "test": 2}, (label, splits)
    # A shop copy of a Kaggle test photo is tested with it, never trained on; a copy of a train photo never tested.
    for shop_path, original in copies.items():
        assert rows[shop_path]["duplicate_group"] == rows[original]["duplicate_group"] != ""
    assert rows["my-shop/Citrine/of_test.jpg"]["split"] == "test"
    assert rows["my-shop/Citrine/of_train.jpg"]["split"] in ("train", "val")

    # Every split image is read from its own source, and the report counts each source.
    items = {item.source: item for item in merged.prepared.items}
    assert items["my-shop/Tourmaline/shop3.jpg"].photo == shop / "Tourmaline" / "shop3.jpg"
    assert items["train/Citrine/10.jpg"].photo == kaggle / "train" / "Citrine" / "10.jpg"
    report = json.loads(merged.prepared.report_file.read_text())
    assert report["sources"]["my-shop"] == {"folder": str(shop), "images": {"train": 19, "val": 6, "test": 7}}
    assert sum(report["sources"]["gems"]["images"].values()) == len(own) - 2  # the dropped label conflict
    assert sum(len(dataset) for dataset in merged.datasets.values()) == len(items)
    assert _digests(kaggle, shop) == before  # nothing under either source was written to


def test_an_extra_source_held_out_nowhere_trains_every_photo_but_copies_of_held_out_ones(tmp_path):
    kaggle, shop = tmp_path / "gems", tmp_path / "my-shop"
    _folder_with_duplicates(kaggle, layout="split_folders")
    copies = _shop(shop, kaggle)
    settings = ["data.split=predefined", f"data.extra_roots=[{shop}]"]
    held_out = folder_datamodule(kaggle, tmp_path / "held_out", settings)
    held_out.prepare_data()
    all_trained = folder_datamodule(kaggle, tmp_path / "all_trained", [*settings, "data.extra_roots_held_out=false"])
    all_trained.prepare_data()

    rows = {row["path"]: row for row in read_manifest(all_trained.prepared.manifest_file)}
    split_of = {row["path"]: row["split"] for row in read_manifest(held_out.prepared.manifest_file)}
    # Its own manifest: the same folders split another way are not "a changed folder".
    assert all_trained.prepared.manifest_file != held_out.prepared.manifest_file
    # The data root's photos stay where they were; every shop photo trains, but the copy of a Kaggle test
    # photo, which is tested with it, and the copy of a train photo, which goes where its original goes.
    assert {p: r["split"] for p, r in rows.items() if not p.startswith("my-shop/")} == {
        p: split for p, split in split_of.items() if not p.startswith("my-shop/")
    }
    shop_splits = Counter(r["split"] for p, r in rows.items() if p.startswith("my-shop/") and p not in copies)
    assert shop_splits == {"train": 30}
    assert rows["my-shop/Citrine/of_test.jpg"]["split"] == "test"
    assert rows["my-shop/Citrine/of_train.jpg"]["split"] == split_of["train/Citrine/10.jpg"]
    report = json.loads(all_trained.prepared.report_file.read_text())
    assert report["split"]["extra_roots_held_out"] is False
    assert report["sources"]["my-shop"]["images"]["test"] == 1

    # A run reports each source's part of its test split where two sources have photos in it.
    assert split_parts(held_out) == ("gems", "my-shop")
    alone = folder_datamodule(kaggle, tmp_path / "alone", ["data.split=predefined"])
    alone.prepare_data()
    assert split_parts(alone) == ()


def test_a_missing_or_clashing_extra_source_is_one_line_naming_it(tmp_path):
    kaggle = tmp_path / "gems"
    _folder_with_duplicates(kaggle)  # flat: its class folders are its top-level names
    missing = folder_datamodule(kaggle, tmp_path, [f"data.extra_roots=[{tmp_path / 'nowhere'}]"])
    with pytest.raises(GemLightningError, match=r"data.extra_roots: .*nowhere is not a folder"):
        missing.prepare_data()
    clash = tmp_path / "elsewhere" / "Citrine"  # named like a class folder of the data root
    (clash / "Citrine").mkdir(parents=True)
    (clash / "Tourmaline").mkdir()
    for index, label in enumerate(("Citrine", "Tourmaline")):
        (clash / label / "a.jpg").write_bytes(_jpeg_bytes(_gem_photo(7000 + index), 90))
    clashing = folder_datamodule(kaggle, tmp_path, [f"data.extra_roots=[{clash}]"])
    with pytest.raises(GemLightningError, match=r"is named like .*gems/Citrine; .* give the folder another name"):
        clashing.prepare_data()
