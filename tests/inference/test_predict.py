"""Prediction with a tiny trained checkpoint: the command, its JSON/CSV, bad files and bad checkpoints."""

from __future__ import annotations

import csv
import inspect
import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image

from gem_lightning.cli import predict
from gem_lightning.config import composition as train_config
from gem_lightning.data.image_dataset import evaluation_dataset
from gem_lightning.errors import GemLightningError
from gem_lightning.inference.backbone_features import prepared_image_features
from gem_lightning.inference.logits import collect_logits
from gem_lightning.inference.predictor import Predictor
from gem_lightning.trust.nearest_photos import TrainingPhotos
from tests.helpers.configs import composed_model
from tests.helpers.workplace import GEMSTONES_DIR, needs_shared

# What output=*.json promises its readers.
PREDICTIONS_SCHEMA = {
    "type": "object",
    "required": [
        "checkpoint",
        "class_count",
        "image_size",
        "background",
        "temperature",
        "prediction_sets",
        "taxonomy",
        "novelty",
        "selective_answers",
        "set_shift",
        "predictions",
        "skipped",
    ],  # fmt: skip
    "properties": {
        "class_count": {"type": "integer", "minimum": 1},
        "image_size": {"type": "integer", "minimum": 16},
        "temperature": {"type": "number", "exclusiveMinimum": 0},
        "prediction_sets": {
            "type": ["object", "null"],
            "required": ["coverage", "score", "threshold", "fitted_on"],
            "properties": {"coverage": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}},
        },
        "novelty": {
            "type": ["object", "null"],
            "required": ["accept", "threshold", "fitted_on"],
            "properties": {"accept": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}},
        },
        "selective_answers": {
            "type": ["object", "null"],
            "required": ["accuracy", "threshold", "fitted_on"],
            "properties": {
                "accuracy": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "threshold": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            },
        },
        "set_shift": {
            "type": ["object", "null"],
            "required": ["photos", "statistic", "p_value", "unlike_validation"],
            "properties": {
                "photos": {"type": "integer", "minimum": 1},
                "statistic": {"type": "number", "minimum": 0, "maximum": 1},
                "p_value": {"type": "number", "minimum": 0, "maximum": 1},
                "unlike_validation": {"type": "boolean"},
            },
        },
        "predictions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "file",
                    "model_input",
                    "answer",
                    "known",
                    "novelty",
                    "sure_enough",
                    "nearest_training_photos",
                    "top_k",
                    "prediction_set",
                    "family",
                ],  # fmt: skip
                "properties": {
                    "file": {"type": "string"},
                    "model_input": {"type": "string"},
                    "answer": {"type": "string", "minLength": 1},
                    "known": {"type": ["boolean", "null"]},
                    "sure_enough": {"type": ["boolean", "null"]},
                    "novelty": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
                    "nearest_training_photos": {
                        "type": ["array", "null"],
                        "items": {"type": "object", "required": ["class", "file", "distance"]},
                    },
                    "prediction_set": {"type": ["array", "null"], "minItems": 1, "items": {"type": "string"}},
                    "family": {"type": ["object", "null"], "required": ["name", "probability", "classes"]},
                    "top_k": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["class", "probability"],
                            "properties": {
                                "class": {"type": "string"},
                                "probability": {"type": "number", "minimum": 0, "maximum": 1},
                            },
                            "additionalProperties": False,
                        },
                    },
                },
            },
        },
        "skipped": {
            "type": "array",
            "items": {"type": "object", "required": ["file", "reason"]},
        },
    },
}


def _photo_folder(run, tmp_path: Path) -> Path:
    """Three of the run's own test images, a corrupt 'photo', a text file and a hidden file, in a nested folder
    that itself lies inside a hidden one (as ~/.cache/... would)."""
    folder = tmp_path / ".hidden_parent" / "photos"
    (folder / "more").mkdir(parents=True)
    tests = [item for item in run.datamodule.prepared.items if item.split == "test"][:3]
    for index, item in enumerate(tests):
        shutil.copyfile(item.image_file, (folder if index else folder / "more") / f"gem{index}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("bought in 2019")
    (folder / ".thumbnail.jpg").write_bytes(b"not looked at")
    return folder


def test_predict_command_writes_json_with_full_distributions_and_skips_bad_files(trained_demo_run, tmp_path, capsys):
    run = trained_demo_run
    folder = _photo_folder(run, tmp_path)
    output = tmp_path / "out" / "predictions.json"
    classes = len(run.class_names)
    status = predict.main(
        [f"ckpt={run.checkpoint}", f"input={folder}", f"output={output}", f"top_k={classes}", "progress=false"]
    )
    assert status == 0
    document = json.loads(output.read_text())
    jsonschema.validate(document, PREDICTIONS_SCHEMA)
    assert len(document["predictions"]) == 3
    # notes.txt is no photo: left out of a folder silently, not "skipped" (a named file would get a reason).
    assert {Path(row["file"]).name for row in document["skipped"]} == {"broken.jpg"}
    assert all(row["reason"].startswith("cannot decode") for row in document["skipped"])
    for row in document["predictions"]:
        names = [entry["class"] for entry in row["top_k"]]
        probabilities = [entry["probability"] for entry in row["top_k"]]
        assert sorted(names) == sorted(run.class_names)  # every class once
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert probabilities == sorted(probabilities, reverse=True)
        # The set holds the top class and is ranked like the probabilities; the answer names it.
        assert row["prediction_set"] == names[: len(row["prediction_set"])]
        # Known: the set in words. Farther from every class than the novelty threshold: no class claimed.
        assert row["known"] == (row["novelty"] <= document["novelty"]["threshold"])
        if row["known"]:
            assert row["answer"].endswith(f"{document['prediction_sets']['coverage']:.0%} sure")
            assert " or ".join(row["prediction_set"]) in row["answer"] or "one of" in row["answer"]
        else:
            assert row["answer"] == f"not one of the {classes} classes I know (nearest: {names[0]}, " + (
                f"{probabilities[0]:.0%})"
            )
        # The nearest training photos of each of the top 3 classes, two each, nearest first: real files.
        nearest = row["nearest_training_photos"]
        assert [entry["class"] for entry in nearest] == [name for name in names[:3] for _ in range(2)]
        assert all(Path(entry["file"]).is_file() for entry in nearest)
        assert nearest[0]["distance"] <= nearest[1]["distance"]
    # The run calibrated its best checkpoint and fitted its prediction sets and novelty rule; predictions use them.
    assert document["prediction_sets"]["score"] == "lac" and document["prediction_sets"]["coverage"] == 0.9
    assert document["novelty"]["accept"] == 0.95 and document["novelty"]["fitted_on"].startswith("centroids of")
    # Three of the run's own test photos: as a set no farther from the classes than its validation photos.
    assert document["set_shift"]["photos"] == 3 and document["set_shift"]["unlike_validation"] is False
    stored = torch.load(run.checkpoint, weights_only=True)["gem_lightning"]["temperature"]
    assert document["temperature"] == pytest.approx(stored)
    printed = capsys.readouterr().out
    said = [line for line in printed.splitlines() if "broken.jpg" in line]
    assert len(said) == 1 and said[0].startswith("skipped ") and "notes.txt" not in printed  # said once


def test_selective_answers_withhold_the_photos_less_sure_than_validation_answers_right_that_often(
    trained_demo_run, tmp_path, capsys
):
    run = trained_demo_run
    folder = tmp_path / "photos"
    folder.mkdir()
    for item in run.datamodule.prepared.items:
        if item.split == "test":
            shutil.copyfile(item.image_file, folder / f"{item.label}_{item.image_file.name}")
    plain, selective = tmp_path / "plain.json", tmp_path / "selective.json"
    common = [f"ckpt={run.checkpoint}", f"input={folder}", "progress=false", "novelty.accept=1.0"]
    assert predict.main([*common, f"output={plain}"]) == 0
    assert predict.main([*common, f"output={selective}", "selective.accuracy=0.85"]) == 0
    plain, selective = json.loads(plain.read_text()), json.loads(selective.read_text())
    jsonschema.validate(selective, PREDICTIONS_SCHEMA)
    assert plain["selective_answers"] is None and all(row["sure_enough"] is None for row in plain["predictions"])
    rule = selective["selective_answers"]
    assert rule["accuracy"] == 0.85 and rule["fitted_on"].endswith("val images")
    stored = torch.load(run.checkpoint, weights_only=True)["gem_lightning"]["selective_answers"]
    assert len(stored["confidences"]) == len([i for i in run.datamodule.prepared.items if i.split == "val"])
    threshold = rule["threshold"] if rule["threshold"] is not None else float("inf")
    withheld = 0
    for row, as_before in zip(selective["predictions"], plain["predictions"], strict=True):
        top = row["top_k"][0]
        assert row["sure_enough"] == (top["probability"] >= threshold)
        if row["sure_enough"]:
            assert row["answer"] == as_before["answer"]  # the same answer as without the mode
        else:
            withheld += 1
            assert row["answer"] == (
                "not sure enough to answer: less sure than answers that were 85% right on validation "
                f"(most probable: {top['class']}, {top['probability']:.0%})"
            )
    # The tiny demo model is unsure of some of its test photos and sure of others.
    assert 0 < withheld < len(selective["predictions"]), selective["predictions"]
    assert f"{withheld} photo(s) not answered: less sure than" in capsys.readouterr().out


def test_predict_command_writes_csv(trained_demo_run, tmp_path):
    run = trained_demo_run
    folder = _photo_folder(run, tmp_path)
    output = tmp_path / "predictions.csv"
    assert predict.main([f"ckpt={run.checkpoint}", f"input={folder}/*.png", f"output={output}", "top_k=3"]) == 0
    rows = list(csv.DictReader(output.open()))
    # The glob is not recursive: the image in more/ is left out, as are the two bad files.
    assert len(rows) == 2
    assert list(rows[0]) == [
        "file",
        "answer",
        "known",
        "class_1",
        "probability_1",
        "class_2",
        "probability_2",
        "class_3",
        "probability_3",
        "prediction_set",
        "family",
        "skipped",
    ]
    for row in rows:
        assert row["class_1"] in run.class_names
        assert row["prediction_set"].split("; ")[0] == row["class_1"] and row["answer"]
        assert row["known"] in ("yes", "no") and row["answer"].startswith("not one of") == (row["known"] == "no")
        assert float(row["probability_1"]) >= float(row["probability_2"]) >= float(row["probability_3"])


def test_predictions_match_the_training_evaluation_path(trained_demo_run):
    """A photo predicted from its file gets exactly the probabilities the run's test loader gave it."""
    run = trained_demo_run
    predictor = Predictor(run.checkpoint, cache_dir=run.cache_dir, progress=False)
    dataset = run.datamodule.datasets["test"]
    expected = collect_logits(predictor.model, dataset, progress=False)
    sources = [path for path, _ in dataset.items]
    predictions, skipped = predictor.predict_files(sources)
    assert not skipped
    got = torch.stack([p.probabilities for p in predictions])
    torch.testing.assert_close(got, (expected.outputs / predictor.temperature).softmax(-1))
    # Its features are those calibration fitted the novelty rule on (the run's cached pass): one distance each.
    features = torch.stack([p.features for p in predictions])
    cached = prepared_image_features(predictor.model, run.datamodule)[dataset.rows]
    torch.testing.assert_close(features, cached, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(features, expected.features)
    # Uncalibrated: the same ranking, other probabilities (the run's temperature is not 1).
    raw = Predictor(run.checkpoint, calibrated=False, progress=False)
    raw_predictions, _ = raw.predict_files(sources[:4])
    for calibrated, uncalibrated in zip(predictions[:4], raw_predictions, strict=True):
        assert calibrated.probabilities.argmax() == uncalibrated.probabilities.argmax()
    assert predictor.temperature != pytest.approx(1.0)


def test_a_training_photo_resembles_itself_most(trained_demo_run):
    run = trained_demo_run
    predictor = Predictor(run.checkpoint, cache_dir=run.cache_dir, progress=False)
    photos = TrainingPhotos(**predictor.training_photos)
    assert len(photos.files) == len(run.datamodule.datasets["train"])
    item = next(item for item in run.datamodule.prepared.items if item.split == "train")
    photo = Path(run.datamodule.root) / item.source
    (prediction,), _ = predictor.predict_files([photo])
    label = torch.tensor([[run.class_names.index(item.label)]])
    (((nearest, second),),) = photos.nearest(prediction.features[None], label, per_class=2)
    assert nearest.file == photo and nearest.distance < 2e-3 < second.distance


def test_a_tensor_of_the_wrong_size_or_type_is_one_clear_error(trained_demo_run):
    predictor = Predictor(trained_demo_run.checkpoint, progress=False)
    size = predictor.image_size
    good = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    assert predictor.predict_tensor(good).sum(dim=1).allclose(torch.ones(2))
    for bad in (good.float(), good[:, :1], torch.zeros(2, 3, size + 8, size, dtype=torch.uint8), good[0]):
        with pytest.raises(GemLightningError, match=r"uint8 RGB batches of shape \(N, 3, "):
            predictor.predict_tensor(bad)


def test_missing_corrupt_and_foreign_checkpoints_and_missing_keys_give_one_line(trained_demo_run, tmp_path, capsys):
    photo = next(path for path, _ in trained_demo_run.datamodule.datasets["test"].items)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(trained_demo_run.checkpoint.read_bytes()[:5000])  # a copy cut short
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    cases = {
        tmp_path / "nowhere.ckpt": "checkpoint not found",
        corrupt: "cannot read checkpoint",
        foreign: "is not a gem-lightning checkpoint",
    }
    for checkpoint, message in cases.items():
        assert predict.main([f"ckpt={checkpoint}", f"input={photo}"]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and message in error and str(checkpoint) in error
        assert error.count("\n") == 1
    assert predict.main([f"input={photo}"]) == 2
    assert "missing ckpt" in capsys.readouterr().err
    assert predict.main([f"ckpt={trained_demo_run.checkpoint}", f"input={tmp_path}/none*.jpg"]) == 2
    assert "no such file, folder, or files matching" in capsys.readouterr().err
    assert predict.main([f"ckpt={trained_demo_run.checkpoint}", f"input={photo}", "colour=red"]) == 2
    assert "colour" in capsys.readouterr().err


@needs_shared(GEMSTONES_DIR)
def test_real_kaggle_photos_of_any_size_and_mode(trained_demo_run, tmp_path):
    """A 3,947 px JPEG, an RGBA PNG named .jpg and an ordinary photo all get a prediction."""
    files = [
        GEMSTONES_DIR / "train" / "Chrysocolla" / "chrysocolla_5.jpg",
        GEMSTONES_DIR / "train" / "Variscite" / "variscite_32.jpg",
        GEMSTONES_DIR / "test" / "Amethyst" / "amethyst_18.jpg",
    ]
    predictor = Predictor(trained_demo_run.checkpoint, cache_dir=tmp_path / "cache", progress=False)
    predictions, skipped = predictor.predict_files(files)
    assert not skipped
    assert [p.source for p in predictions] == files
    for prediction in predictions:
        assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_prediction_cuts_the_background_out_exactly_as_training_did(trained_rembg_run):
    """From the user's original photos: the same rembg cut-outs (from the same cache) and the same probabilities."""
    run = trained_rembg_run
    predictor = Predictor(run.checkpoint, cache_dir=run.cache_dir, progress=False)
    assert predictor.describe_background() == "rembg u2netp"
    dataset = run.datamodule.datasets["test"]
    expected = collect_logits(predictor.model, dataset, progress=False)
    originals = [run.datamodule.root / item.source for item in run.datamodule.prepared.items if item.split == "test"]
    cut_outs = [path for path, _ in dataset.items]
    stamps = [path.stat().st_mtime_ns for path in cut_outs]
    predictions, skipped = predictor.predict_files(originals)
    assert not skipped
    # The model read the training run's cut-outs, found in the cache by content, not made again.
    assert [p.model_input for p in predictions] == cut_outs
    assert [path.stat().st_mtime_ns for path in cut_outs] == stamps
    got = torch.stack([p.probabilities for p in predictions])
    torch.testing.assert_close(got, (expected.outputs / predictor.temperature).softmax(-1))


@needs_shared(GEMSTONES_DIR)
def test_a_new_photo_is_cut_out_into_the_cache_once(trained_rembg_run, tmp_path):
    photo = GEMSTONES_DIR / "test" / "Amethyst" / "amethyst_18.jpg"
    predictor = Predictor(trained_rembg_run.checkpoint, cache_dir=tmp_path / "cache", progress=False)
    (first,), _ = predictor.predict_files([photo])
    assert first.source == photo  # the user's own path, as without background removal
    assert first.model_input.is_relative_to(predictor.background.variant_dir(tmp_path / "cache"))
    stamp = first.model_input.stat().st_mtime_ns
    (second,), _ = predictor.predict_files([photo])
    assert second.model_input == first.model_input and first.model_input.stat().st_mtime_ns == stamp
    torch.testing.assert_close(first.probabilities, second.probabilities)
    assert photo.is_file()  # the original is only read


@pytest.mark.parametrize("command", ["predict", "evaluate", "web"])
def test_each_commands_predictor_settings_reach_the_predictor(command):
    # One builder for every command: a key a command's config shares with Predictor's arguments must be read
    # (not silently ignored), and every key the builder reads must be an argument.
    arguments = set(inspect.signature(Predictor.__init__).parameters) - {"self", "checkpoint"}
    assert set(Predictor.COMMAND_SETTINGS) <= arguments
    cfg = train_config.compose_config(command, ["ckpt=model.ckpt"])
    assert set(cfg) & arguments <= set(Predictor.COMMAND_SETTINGS)


def test_a_pass_over_a_dataset_leaves_the_global_random_state_alone(tmp_path):
    # Evaluation inside a run (and a head-only run's feature cache, hit or miss) must not shift the shuffling
    # and dropout that follow it.
    items = []
    for index in range(3):
        path = tmp_path / f"{index}.png"
        Image.fromarray(np.full((20, 20, 3), 60 * index, dtype=np.uint8)).save(path)
        items.append((path, index % 2))
    model = composed_model(["a", "b"], tmp_path, ["data.image_size=32"])
    torch.manual_seed(0)
    before = torch.get_rng_state()
    logits = collect_logits(model, evaluation_dataset(items, 32), batch_size=2, progress=False)
    assert logits.outputs.shape == (3, 2) and logits.targets.tolist() == [0, 1, 0]
    assert torch.equal(torch.get_rng_state(), before)
