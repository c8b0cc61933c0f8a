"""``adapt`` on a source unlike the training photos: the adapted checkpoint, as every command takes it, and the
curve of photos per class, whose N = 0 point is evaluate's figure."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from gem_lightning.cli import adapt, evaluate
from gem_lightning.export.formats import export_checkpoint
from gem_lightning.files.hashing import file_sha256
from gem_lightning.inference.predictor import Predictor
from gem_lightning.models.checkpoint_format import read_checkpoint
from tests.helpers.other_source import LABELLED_PER_CLASS, shop_photos


def _summary(report_folder: Path) -> dict:
    return json.loads((report_folder / "evaluation.json").read_text())


def test_an_adapted_checkpoint_recognises_the_source_and_every_command_takes_it(trained_demo_run, tmp_path):
    run = trained_demo_run
    shop, labelled, rest = shop_photos(tmp_path)
    cache = f"cache_dir={tmp_path / 'cache'}"
    original = file_sha256(run.checkpoint)
    adapted_file = tmp_path / "adapted.ckpt"

    assert adapt.main([f"ckpt={run.checkpoint}", f"input={labelled}", f"output={adapted_file}", cache]) == 0

    assert file_sha256(run.checkpoint) == original  # the checkpoint adapted from is not changed
    stored = read_checkpoint(adapted_file)["gem_lightning"]
    assert stored["source_prototypes"]["photos"].tolist() == [LABELLED_PER_CLASS] * len(run.class_names)
    assert "left out" in stored["calibration"]["split"] and "left out" in stored["prediction_sets"]["split"]
    for ckpt, name in ((run.checkpoint, "plain"), (adapted_file, "adapted")):
        command = [f"ckpt={ckpt}", f"input={rest}", "calibrate=false", f"output_dir={tmp_path / name}", cache]
        assert evaluate.main(command) == 0
    plain, adapted = _summary(tmp_path / "plain"), _summary(tmp_path / "adapted")
    # Calibrating it on the run's validation split would undo the fits made on the source: one line instead.
    assert evaluate.main([f"ckpt={adapted_file}", f"input={rest}", cache]) == 2
    assert read_checkpoint(adapted_file)["gem_lightning"]["calibration"] == stored["calibration"]
    assert "adapted to 3 photos each of 10 of 10 classes of shop_labelled" in adapted["title"]
    assert plain["summary"]["images"] == adapted["summary"]["images"] == 50
    # Three photos a class of the new light lift what the tiny demo model recognises of the other five
    # (0.24 -> 0.48 mean recall here).
    assert adapted["summary"]["recall_mean"] >= plain["summary"]["recall_mean"] + 0.15, (plain, adapted)

    predictor = Predictor(adapted_file, cache_dir=tmp_path / "cache", progress=False)
    assert predictor.folder_suffix == "-adapted"  # its reports never overwrite the original's
    predictions, _ = predictor.predict_files(sorted(rest.rglob("*.png"))[:4])
    assert all(abs(float(p.probabilities.sum()) - 1) < 1e-5 for p in predictions)
    # The exported network adds the prototypes as the predictor does (export compares the two).
    (check,) = export_checkpoint(adapted_file, tmp_path / "export", ("torchscript",), set_coverage=0.9)
    assert check.passed(1e-4)


def test_the_curve_starts_at_evaluates_figure_and_rises_with_photos_per_class(trained_demo_run, tmp_path):
    run = trained_demo_run
    shop, _, _ = shop_photos(tmp_path)
    cache = f"cache_dir={tmp_path / 'cache'}"
    command = [f"ckpt={run.checkpoint}", f"input=[{shop}]", "curve=true", "shots=[0,3]", "draws=2"]
    assert adapt.main([*command, f"output_dir={tmp_path / 'curve'}", cache]) == 0
    with open(tmp_path / "curve" / "adaptation.csv") as file:
        points = list(csv.DictReader(file))
    assert [(p["shots"], p["draw"]) for p in points] == [("0", "0"), ("3", "0"), ("3", "1")]
    assert [int(p["measured_photos"]) for p in points] == [80, 50, 50]
    assert (tmp_path / "curve" / "adaptation.png").stat().st_size > 10_000
    assert "| shop |" in (tmp_path / "curve" / "adaptation.md").read_text()
    plain = [f"ckpt={run.checkpoint}", f"input={shop}", "calibrate=false", f"output_dir={tmp_path / 'plain'}", cache]
    assert evaluate.main(plain) == 0
    # One number per measurement: the curve's N = 0 is evaluate's mean recall and set coverage on the same photos.
    summary = _summary(tmp_path / "plain")["summary"]
    assert float(points[0]["recall_mean"]) == summary["recall_mean"]
    assert float(points[0]["set_coverage"]) == summary["set_coverage_90"]
    assert float(points[0]["answered"]) == summary["answered_at_85"]
    assert all(0 <= float(p["set_coverage"]) <= 1 for p in points[1:])
    # 0.21 -> 0.42 and more here.
    assert min(float(p["recall_mean"]) for p in points[1:]) >= float(points[0]["recall_mean"]) + 0.15
