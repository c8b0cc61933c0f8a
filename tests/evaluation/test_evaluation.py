"""Calibration (temperature scaling) and the evaluation report, on synthetic logits and a trained tiny run."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gem_lightning.cli import evaluate
from gem_lightning.evaluation.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)
from gem_lightning.evaluation.metrics import evaluate_logits
from gem_lightning.evaluation.report import confusion_figure
from gem_lightning.inference.loop import DatasetOutputs
from gem_lightning.models.classifier import GemClassifier


def _labels_drawn_from(logits: torch.Tensor, temperature: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator).flatten()


def test_fitting_recovers_the_temperature_that_generated_the_labels():
    generator = torch.Generator().manual_seed(1)
    logits = 4 * torch.randn(4000, 12, generator=generator)
    for true_temperature in (0.5, 2.5):
        targets = _labels_drawn_from(logits, true_temperature)
        fitted = fit_temperature(logits, targets)
        assert fitted == pytest.approx(true_temperature, rel=0.1)
        assert negative_log_likelihood(logits, targets, fitted) < negative_log_likelihood(logits, targets)


def test_a_validation_split_without_mistakes_leaves_the_temperature_at_one():
    logits = torch.eye(5).repeat(6, 1) * 3
    targets = torch.arange(5).repeat(6)
    assert fit_temperature(logits, targets) < 0.2  # what an unguarded fit does: sharpen towards certainty
    result = calibrate(logits, targets)
    assert result.temperature == 1.0 and result.nll_after == result.nll_before


def test_reliability_bins_give_torchmetrics_ece():
    generator = torch.Generator().manual_seed(2)
    logits = 3 * torch.randn(600, 7, generator=generator)
    targets = _labels_drawn_from(logits, 2.0)
    probabilities = logits.softmax(-1)
    bins = reliability_bins(probabilities, targets)
    assert sum(b.count for b in bins) == 600
    ece = sum(b.count * abs(b.accuracy - b.confidence) for b in bins if b.count) / 600
    assert ece == pytest.approx(expected_calibration_error(probabilities, targets), abs=1e-6)
    result = calibrate(logits, targets)
    assert result.ece_after < result.ece_before and result.nll_after < result.nll_before


def test_leak_free_figures_leave_out_leaked_images():
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0]])
    targets = torch.tensor([0, 1, 1, 2])  # the third image is wrong
    leaked = torch.tensor([True, True, False, False])
    summary = evaluate_logits(DatasetOutputs(logits, targets, leaked), ["a", "b", "c"], 1.0).summary
    assert summary["top1"] == pytest.approx(0.75)
    assert summary["top1_leak_free"] == pytest.approx(0.5)
    assert summary["leaked_images"] == 2
    assert (
        "top1_leak_free"
        not in evaluate_logits(DatasetOutputs(logits, targets, ~leaked & False), list("abc"), 1.0).summary
    )


def test_confused_pairs_and_misclassified_come_from_the_confusion_matrix():
    logits = torch.eye(3).repeat(4, 1) * 4  # predictions a, b, c, a, b, c, ...
    targets = torch.tensor([0, 1, 2, 1, 1, 2, 0, 0, 2, 0, 1, 2])
    evaluation = evaluate_logits(DatasetOutputs(logits, targets, torch.zeros(12, dtype=bool)), ["a", "b", "c"], 1.0)
    confusion = evaluation.confusion
    assert int(confusion.sum()) == 12
    wrong = int(confusion.sum() - confusion.trace())
    assert len(evaluation.misclassified) == wrong
    (pair, *_) = evaluation.confused_pairs
    assert pair.total == max(int(confusion[i, j] + confusion[j, i]) for i in range(3) for j in range(i + 1, 3))
    assert sum(p.total for p in evaluation.confused_pairs) == wrong


def test_confusion_matrix_of_87_classes_is_drawn_large_enough_to_read(tmp_path):
    names = [f"Class name {i:02d}" for i in range(87)]
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(400, 87, generator=generator)
    targets = torch.randint(0, 87, (400,), generator=generator)
    figure = confusion_figure(
        evaluate_logits(DatasetOutputs(logits, targets, torch.zeros(400, dtype=bool)), names, 1.0)
    )
    path = tmp_path / "cm.png"
    figure.savefig(path, dpi=120)
    width, height = Image.open(path).size
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_yticklabels()] == names
    assert min(label.get_fontsize() for label in axes.get_xticklabels()) >= 6
    # Each class row gets at least 20 pixels: 6 pt labels (10 px at 120 dpi) never overlap.
    assert height / 87 >= 20 and width / 87 >= 20


def test_training_run_calibrates_its_checkpoint_and_writes_the_report(trained_demo_run):
    run = trained_demo_run
    checkpoint = torch.load(run.checkpoint, weights_only=True)
    calibration = checkpoint["gem_lightning"]["calibration"]
    assert calibration["split"] == "val" and calibration["images"] == len(run.datamodule.datasets["val"])
    assert calibration["nll_after"] <= calibration["nll_before"]
    # The temperature is in the weights, so every loader of the checkpoint predicts with it.
    assert float(checkpoint["state_dict"]["temperature"]) == pytest.approx(calibration["temperature"])
    assert float(GemClassifier.from_checkpoint(run.checkpoint).temperature) == pytest.approx(calibration["temperature"])
    # The prediction sets were fitted on the same validation images, after the temperature, and stored beside it.
    sets = checkpoint["gem_lightning"]["prediction_sets"]
    assert sets["split"] == "val" and len(sets["calibration_scores"]) == calibration["images"]
    assert sets["score"] == "lac" and sets["calibration_scores"] == sorted(sets["calibration_scores"])
    # And the novelty rule: a centroid per class from the training photos, the validation photos' distances.
    novelty = checkpoint["gem_lightning"]["novelty"]
    assert novelty["training_images"] == len(run.datamodule.datasets["train"])
    assert novelty["centroids"].shape == (len(run.class_names), 512)  # ResNet-18's pooled features
    distances = novelty["calibration_distances"]
    assert len(distances) == calibration["images"] and distances == sorted(distances) and 0 <= distances[0]
    # And the training photos to show as look-alikes: one feature row and file per training photo.
    photos = checkpoint["gem_lightning"]["training_photos"]
    assert (
        photos["features"].shape == (len(photos["files"]), 512) and len(photos["files"]) == novelty["training_images"]
    )

    folder = run.run_dir / "evaluation" / "test"
    for name in ("report.md", "confusion_matrix.png", "reliability_diagram.png", "evaluation.json", "per_class.csv"):
        assert (folder / name).is_file(), name
    document = json.loads((folder / "evaluation.json").read_text())
    summary = document["summary"]
    # The report's figures agree with what Lightning logged for the same checkpoint on the same split, under
    # trainer.precision=auto (bf16-mixed on this CPU): the loss to float32 rounding, so no image can flip.
    assert summary["top1"] == pytest.approx(run.metrics["test/acc"], abs=1e-6)
    assert summary["nll_before"] == pytest.approx(run.metrics["test/loss"], abs=1e-5)
    assert summary["top5"] == pytest.approx(run.metrics["test/acc_top5"], abs=1e-6)
    assert summary["images"] == len(run.datamodule.datasets["test"])
    rows = list(csv.DictReader((folder / "per_class.csv").open()))
    assert [row["class"] for row in rows] == list(run.class_names)
    assert sum(int(row["support"]) for row in rows) == summary["images"]
    assert len(document["misclassified"]) == round(summary["images"] * (1 - summary["top1"]))
    assert (folder / "misclassified.png").is_file() == bool(document["misclassified"])
    report = (folder / "report.md").read_text()
    assert bool(document["misclassified"]) == ("Grad-CAM" in report)  # the gallery under its heat maps
    assert "![confusion matrix](confusion_matrix.png)" in report and "## Most-confused class pairs" in report
    assert f"| {calibration['nll_before']:.4f} | {calibration['nll_after']:.4f} |" in report
    # Sets at 80, 90 and 95 % and the families (the demo has three corundum classes).
    assert "## Prediction sets" in report and "| 90.0 % |" in report and "## Gem families" in report
    assert summary["set_size_80"] <= summary["set_size_90"] <= summary["set_size_95"]
    assert summary["family_top1"] >= summary["top1"]
    assert "| corundum | 3 |" in report  # Ruby, Sapphire Pink, Sapphire Blue
    family_of = {row["class"]: row["family"] for row in rows}
    assert family_of["Ruby"] == family_of["Sapphire Pink"] == "corundum" and family_of["Diamond"] == "diamond"
    assert all(0 <= float(row["set_coverage"]) <= 1 for row in rows if int(row["support"]))
    # Test gems turned away as "not one I know": counted, and the kept ones' top-1 beside it.
    novelty_row = document["trust"]["novelty"]
    assert novelty_row["accept"] == 0.95 and novelty_row["images"] == summary["images"]
    assert summary["unknown_share"] == novelty_row["unknown"] / summary["images"]
    assert f"{novelty_row['unknown']} of {int(summary['images'])}" in report and "## Not one of the classes" in report
    assert run.metrics["calibration/temperature"] == pytest.approx(calibration["temperature"])
    assert run.metrics["test/ece_calibrated"] == pytest.approx(summary["ece_after"])
    assert run.metrics["test/nll_calibrated"] == pytest.approx(summary["nll_after"])
    events = EventAccumulator(str(run.run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    (logged,) = events.Scalars("calibration/temperature")
    assert logged.value == pytest.approx(calibration["temperature"])
    assert "test/ece_calibrated" in events.Tags()["scalars"]


def test_evaluate_command_on_a_labelled_folder(trained_demo_run, tmp_path, capsys):
    run = trained_demo_run
    folder = tmp_path / "my_gems"
    # A folder of three of the model's ten classes, as a user's photos often are.
    present = sorted({i.label for i in run.datamodule.prepared.items})[:3]
    photos = [i for i in run.datamodule.prepared.items if i.split == "test" and i.label in present]
    for item in photos:
        (folder / item.label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.image_file, folder / item.label / item.image_file.name)
    out = tmp_path / "report"
    args = [
        f"ckpt={run.checkpoint}",
        f"input={folder}",
        "calibrate=false",
        f"output_dir={out}",
        f"cache_dir={tmp_path}",
    ]
    assert evaluate.main(args) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    document = json.loads((out / "evaluation.json").read_text())
    assert document["summary"]["images"] == len(photos)
    assert document["data"] == f"labelled folder {folder}"
    # report.md's per-class table lists the three classes with photos; one line names the seven without, each
    # with the photos wrongly called it (counted here from the listed mistakes).
    report = (out / "report.md").read_text()
    table = report.split("## Per class (weakest F1 first)\n\n", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    assert sorted(row.split(" | ")[0].removeprefix("| ") for row in table) == present
    absent = [name for name in run.class_names if name not in present]
    called = Counter(m["predicted"] for m in document["misclassified"] if m["predicted"] in absent)
    shown = ", ".join(f"{name} ({called[name]} called it)" if called[name] else name for name in absent)
    assert f"\nNo photos here of 7 of the model's 10 classes: {shown}.\n" in report

    (folder / "Obsidian").mkdir()
    shutil.copyfile(run.datamodule.prepared.items[0].image_file, folder / "Obsidian" / "x.png")
    assert evaluate.main(args) == 2
    assert "class folders the checkpoint does not know: Obsidian" in capsys.readouterr().err
