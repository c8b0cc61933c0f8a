"""Several labelled sources evaluated at once: a report each, one table beside the run's split, one number each."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from gem_lightning.cli import evaluate
from gem_lightning.inference.predictor import Predictor
from gem_lightning.trust.novelty import SHIFT_P_VALUE
from tests.helpers.workplace import CONFIG_DIR, OTHER_SOURCES_DIR, needs_shared

COMPARED = ("images", "top1", "top5", "recall_mean", "classes_at_zero", "ece_before", "ece_after", "set_coverage_90")


def _test_photos(run) -> dict[str, list[Path]]:
    photos: dict[str, list[Path]] = {}
    for item in run.datamodule.prepared.items:
        if item.split == "test":
            photos.setdefault(item.label, []).append(item.image_file)
    return photos


def _per_class(folder: Path) -> list[dict]:
    with (folder / "per_class.csv").open() as handle:
        return [row for row in csv.DictReader(handle) if int(row["support"])]


def test_sources_are_evaluated_side_by_side_with_the_split_each_as_its_own_evaluation(
    trained_demo_run, tmp_path, capsys
):
    run = trained_demo_run
    photos = _test_photos(run)
    classes = sorted(photos)
    shop, phone, small = tmp_path / "shop", tmp_path / "phone", tmp_path / "small"
    for name in classes[:3]:  # a source of three classes, photos as they are
        (shop / name).mkdir(parents=True)
        for photo in photos[name]:
            shutil.copyfile(photo, shop / name / photo.name)
    # Another source: small photos of two classes, and two of them filed under a class the model calls neither,
    # so that class of this source is recognised in none.
    small.mkdir()
    for name in classes[3:5]:
        for photo in photos[name]:
            with Image.open(photo) as image:
                image.convert("RGB").resize((24, 24)).save(small / f"{name}__{photo.stem}.png")
    made = sorted(small.iterdir())
    predictions, _ = Predictor(run.checkpoint, cache_dir=tmp_path / "cache", progress=False).predict_files(made)
    called = {run.class_names[int(item.probabilities.argmax())] for item in predictions if item.source in made[:2]}
    assert len(predictions) == len(made)
    wrong_label = next(name for name in classes if name not in called)
    for index, file in enumerate(made):
        label = wrong_label if index < 2 else file.name.split("__")[0]
        (phone / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, phone / label / file.name)

    out = tmp_path / "report"
    common = [f"ckpt={run.checkpoint}", "calibrate=false", f"cache_dir={tmp_path / 'cache'}"]
    assert evaluate.main([*common, f"input=[{shop},{phone}]", f"output_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert f"table: {out / 'sources.md'}" in printed

    with (out / "sources.csv").open() as handle:
        rows = {row["source"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["test split", "shop", "phone"]
    table = (out / "sources.md").read_text()
    assert table in printed
    assert [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ")][1:] == [
        f"| {name}" for name in ("test split", "shop", "phone")
    ]
    # Each row holds its own report's figures; the split's are those train.py wrote for the same checkpoint.
    own_reports = {"test split": run.run_dir / "evaluation" / "test", "shop": out / "shop", "phone": out / "phone"}
    for source, folder in own_reports.items():
        summary = json.loads((folder / "evaluation.json").read_text())["summary"]
        for key in COMPARED:
            assert float(rows[source][key]) == pytest.approx(summary[key], abs=1e-6), (source, key)
    # Mean recall is over the classes with photos there; a class at 0 is one none of whose photos was recognised.
    for source in ("shop", "phone"):
        per_class = _per_class(out / source)
        assert float(rows[source]["classes_present"]) == len(per_class)
        recalls = [float(row["recall"]) for row in per_class]
        assert float(rows[source]["recall_mean"]) == pytest.approx(sum(recalls) / len(recalls), abs=1e-4)
        assert float(rows[source]["classes_at_zero"]) == recalls.count(0.0)
    assert float(rows["shop"]["images"]) == sum(len(photos[name]) for name in classes[:3])
    assert {row["class"]: float(row["recall"]) for row in _per_class(out / "phone")}[wrong_label] == 0.0
    assert float(rows["phone"]["classes_at_zero"]) >= 1
    # The run's own test photos are drawn like its validation photos: as a set, no farther from the classes.
    assert float(rows["test split"]["novelty_shift_p"]) >= SHIFT_P_VALUE

    # One number per measurement: the folder evaluated alone gives the same figures as its row.
    alone = tmp_path / "alone"
    assert evaluate.main([*common, f"input={phone}", f"output_dir={alone}"]) == 0
    summary = json.loads((alone / "evaluation.json").read_text())["summary"]
    for key in COMPARED:
        assert float(rows["phone"][key]) == pytest.approx(summary[key], abs=1e-6), key

    twin = tmp_path / "elsewhere" / "shop"
    shutil.copytree(shop, twin)
    capsys.readouterr()
    assert evaluate.main([*common, f"input=[{shop},{twin}]", f"output_dir={tmp_path / 'twins'}"]) == 2
    assert "input= lists several folders named shop" in capsys.readouterr().err


@needs_shared(OTHER_SOURCES_DIR)
def test_the_other_sources_preset_lists_every_source_folder_in_shared():
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cfg = compose("evaluate", overrides=["ckpt=x.ckpt", "sources=other_sources"])
    folders = sorted(path for path in OTHER_SOURCES_DIR.iterdir() if path.is_dir())
    assert [Path(folder).resolve() for folder in cfg.input] == folders
    assert all(any(path.is_dir() for path in folder.iterdir()) for folder in folders)
