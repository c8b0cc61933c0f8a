"""One evaluation written as a folder: ``report.md`` with its figures, ``evaluation.json`` and ``per_class.csv``.

Figures (matplotlib, drawn off-screen): the confusion matrix, normalised per true class and sized so that
87 class names stay legible; the reliability diagram before and after temperature scaling; a gallery of
the misclassified images as the model saw them, most confident mistakes first, each under a heat map of where
the model found evidence for the class it wrongly chose.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gem_lightning.data.image_dataset import evaluation_dataset
from gem_lightning.evaluation.calibration import CalibrationResult, ReliabilityBin
from gem_lightning.evaluation.metrics import Evaluation
from gem_lightning.evaluation.trust_report import (
    CSV_TRUST_COLUMNS,
    class_trust_cells,
    csv_trust_cells,
    trust_document,
    trust_lines,
)
from gem_lightning.files.atomic_writes import write_bytes_atomically, write_text_atomically
from gem_lightning.inference.heat_maps import heat_maps, overlay
from gem_lightning.models.classifier import GemClassifier

REPORT_FILE = "report.md"
CONFUSION_FILE = "confusion_matrix.png"
RELIABILITY_FILE = "reliability_diagram.png"
GALLERY_FILE = "misclassified.png"
GALLERY_LIMIT = 48


def save_figure(figure: Figure, path: Path, dpi: int = 100) -> None:
    """The figure as a PNG at ``path``, written atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    write_bytes_atomically(path, buffer.getvalue())


def confusion_figure(evaluation: Evaluation) -> Figure:
    """Rows: true class, columns: predicted, shaded by the share of the row; counts written when they fit."""
    names = evaluation.class_names
    count = len(names)
    confusion = evaluation.confusion.double()
    shares = confusion / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    # About 0.17 inch per class plus room for the names: 87 classes give a 17-inch square at 6 pt labels.
    side = max(6.0, 0.17 * count + 3.0)
    label_size = 6 if count > 40 else 8
    figure = Figure(figsize=(side, side), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    axes.set_xticks(range(count), names, rotation=90, fontsize=label_size)
    axes.set_yticks(range(count), names, fontsize=label_size)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"confusion matrix ({int(confusion.sum())} images; shade = share of the true class)")
    # Faint lines between cells keep rows and columns traceable across a large matrix.
    axes.set_xticks([i - 0.5 for i in range(1, count)], minor=True)
    axes.set_yticks([i - 0.5 for i in range(1, count)], minor=True)
    axes.grid(which="minor", color="#dddddd", linewidth=0.3)
    axes.tick_params(which="minor", length=0)
    for i in range(count):
        for j in range(count):
            value = int(confusion[i, j])
            if value and (i != j or count <= 40):
                colour = "white" if shares[i, j] > 0.5 else "black"
                axes.text(j, i, str(value), ha="center", va="center", fontsize=label_size - 1, color=colour)
    figure.colorbar(image, ax=axes, shrink=0.5, label="share of the true class")
    return figure


def _draw_reliability(axes, bins: list[ReliabilityBin], title: str) -> None:
    width = bins[0].upper - bins[0].lower
    centres = [(b.lower + b.upper) / 2 for b in bins]
    accuracy = [0.0 if math.isnan(b.accuracy) else b.accuracy for b in bins]
    confidence = [0.0 if math.isnan(b.confidence) else b.confidence for b in bins]
    axes.bar(centres, accuracy, width=width, edgecolor="black", linewidth=0.5, label="accuracy")
    gaps = [c - a if b.count else 0.0 for a, c, b in zip(accuracy, confidence, bins, strict=True)]
    axes.bar(centres, gaps, bottom=accuracy, width=width, color="tab:red", alpha=0.35, label="gap to confidence")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for centre, b in zip(centres, bins, strict=True):
        if b.count:
            axes.text(centre, 0.02, str(b.count), ha="center", fontsize=6, rotation=90, color="white")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence (top-1 probability)")
    axes.set_ylabel("accuracy")
    axes.set_title(title, fontsize=10)
    axes.legend(loc="upper left", fontsize=7)


def reliability_figure(evaluation: Evaluation) -> Figure:
    summary = evaluation.summary
    figure = Figure(figsize=(10, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    before, after = figure.subplots(1, 2)
    _draw_reliability(before, evaluation.reliability_before, f"uncalibrated: ECE {summary['ece_before']:.3f}")
    _draw_reliability(
        after,
        evaluation.reliability_after,
        f"temperature {evaluation.temperature:.2f}: ECE {summary['ece_after']:.3f}",
    )
    figure.suptitle("reliability diagram (bars: accuracy per confidence bin; number: images in the bin)")
    return figure


def gallery_figure(
    evaluation: Evaluation, model_inputs: list[Path], image_size: int, explained_by: GemClassifier
) -> Figure:
    """The misclassified images as the model saw them (after background removal and the centre crop), each
    under ``explained_by``'s Grad-CAM heat map of the class it predicted."""
    shown = evaluation.misclassified[:GALLERY_LIMIT]
    columns = max(1, min(8, len(shown)))
    rows = max(1, math.ceil(len(shown) / columns))
    figure = Figure(figsize=(2.0 * columns, 2.3 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    dataset = evaluation_dataset([(model_inputs[index], -1) for index in shown], image_size)
    pictures = torch.stack([dataset[position][0] for position in range(len(shown))])
    heat = heat_maps(explained_by, pictures, [int(evaluation.predicted[index]) for index in shown]).numpy()
    names = evaluation.class_names
    for position, index in enumerate(shown):
        axes = figure.add_subplot(rows, columns, position + 1)
        picture = pictures[position].permute(1, 2, 0).numpy()
        axes.imshow(overlay(picture, heat[position]))
        axes.set_axis_off()
        true_name = names[int(evaluation.targets[index])]
        predicted = names[int(evaluation.predicted[index])]
        axes.set_title(
            f"true {true_name}\npred {predicted} {float(evaluation.confidence[index]):.2f}", fontsize=7, color="darkred"
        )
    more = len(evaluation.misclassified) - len(shown)
    extra = f" (the {GALLERY_LIMIT} most confident of {len(evaluation.misclassified)})" if more > 0 else ""
    how = "; colour: where the model found evidence for the class it chose (Grad-CAM)"
    figure.suptitle(f"misclassified images{extra}{how}", fontsize=10)
    return figure


def _percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def _absent_classes(evaluation: Evaluation) -> list[str]:
    """One line naming the model's classes without a photo here, each with the photos wrongly called it."""
    called = evaluation.confusion.sum(0)
    absent = [
        f"{row.name} ({int(called[index])} called it)" if called[index] else row.name
        for index, row in enumerate(evaluation.classes)
        if not row.support
    ]
    if not absent:
        return []
    return [
        "",
        f"No photos here of {len(absent)} of the model's {len(evaluation.classes)} classes: {', '.join(absent)}.",
    ]


def _markdown(evaluation: Evaluation, context: dict, calibration: CalibrationResult | None, drew_gallery: bool) -> str:
    s = evaluation.summary
    lines = [
        f"# Evaluation: {context['title']}",
        "",
        f"- checkpoint: `{context['checkpoint']}`",
        f"- images: {int(s['images'])} ({context['data']}); classes: {len(evaluation.class_names)}",
        f"- background removal: {context['background']}",
        f"- temperature: {evaluation.temperature:.3f}"
        + (f" (fitted on {calibration.images} {calibration.split} images)" if calibration else " (not calibrated)"),
        "",
        "| metric | value |",
        "|---|---|",
        f"| top-1 accuracy | {_percent(s['top1'])} |",
        f"| top-5 accuracy | {_percent(s['top5'])} |",
        f"| macro F1 | {s['f1_macro']:.3f} |",
        f"| mean recall over the {int(s['classes_present'])} classes with photos here | {_percent(s['recall_mean'])} |",
        f"| classes none of whose photos was recognised | {int(s['classes_at_zero'])} |",
    ]
    if "top1_leak_free" in s:
        clean = int(s["images"] - s["leaked_images"])
        lines += [
            f"| top-1 accuracy, leak-free ({clean} images; {int(s['leaked_images'])} duplicate a training image) "
            f"| {_percent(s['top1_leak_free'])} |",
            f"| top-5 accuracy, leak-free | {_percent(s['top5_leak_free'])} |",
        ]
    lines += ["", "## Calibration", "", "| split | images | NLL before | NLL after | ECE before | ECE after |"]
    lines += ["|---|---|---|---|---|---|"]
    if calibration is not None:
        lines.append(
            f"| {calibration.split} (fitted here) | {calibration.images} | {calibration.nll_before:.4f} | "
            f"{calibration.nll_after:.4f} | {calibration.ece_before:.4f} | {calibration.ece_after:.4f} |"
        )
    lines.append(
        f"| {context['data']} | {int(s['images'])} | {s['nll_before']:.4f} | {s['nll_after']:.4f} | "
        f"{s['ece_before']:.4f} | {s['ece_after']:.4f} |"
    )
    lines += ["", "Temperature scaling never changes a prediction, only its confidence.", ""]
    lines += [f"![reliability diagram]({RELIABILITY_FILE})", "", "## Most-confused class pairs", ""]
    if evaluation.confused_pairs:
        lines += ["| class A | class B | A predicted as B | B predicted as A | total |", "|---|---|---|---|---|"]
        for pair in evaluation.confused_pairs:
            lines.append(
                f"| {pair.first} | {pair.second} | {pair.first_as_second} | {pair.second_as_first} | {pair.total} |"
            )
    else:
        lines.append("No image was confused with another class.")
    lines += ["", f"![confusion matrix]({CONFUSION_FILE})", ""]
    if evaluation.trust is not None:
        lines += trust_lines(evaluation.trust, s["top1"])
    names, cells = class_trust_cells(evaluation.trust)
    lines += ["## Per class (weakest F1 first)", ""]
    lines += [" | ".join(["| class | precision | recall | F1 | support", *names]) + " |"]
    lines += ["|---|---|---|---|---" + "|---" * len(names) + "|"]
    # Only classes with photos here: a folder of a few classes would otherwise open the table with rows of zeros.
    for row in sorted((r for r in evaluation.classes if r.support), key=lambda r: (r.f1, r.name)):
        extra = cells[evaluation.class_names.index(row.name)] if cells else []
        line = f"| {row.name} | {row.precision:.3f} | {row.recall:.3f} | {row.f1:.3f} | {row.support}"
        lines.append(" | ".join([line, *extra]) + " |")
    lines += _absent_classes(evaluation)
    lines += ["", f"## Misclassified images ({len(evaluation.misclassified)})", ""]
    if drew_gallery:
        lines.append(
            "Most confident first, as the model saw them; in colour, where it found evidence for the class it chose "
            "(a Grad-CAM heat map: red on the stone means the stone's look misled it, red elsewhere the background)."
        )
        lines += ["", f"![misclassified images]({GALLERY_FILE})"]
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def write_evaluation_report(
    folder: Path,
    evaluation: Evaluation,
    context: dict,
    model_inputs: list[Path],
    sources: list[str],
    image_size: int,
    calibration: CalibrationResult | None,
    explained_by: GemClassifier,
) -> Path:
    """Write the report folder; returns the path of ``report.md``.

    ``context`` holds ``title``, ``checkpoint``, ``data`` (what was evaluated) and ``background``;
    ``model_inputs[i]`` is the file the model decoded for image i, ``sources[i]`` the name to list it under;
    ``explained_by`` draws the gallery's heat maps (an ensemble's first member).
    """
    folder = Path(folder)
    save_figure(confusion_figure(evaluation), folder / CONFUSION_FILE, dpi=120)
    save_figure(reliability_figure(evaluation), folder / RELIABILITY_FILE)
    drew_gallery = bool(evaluation.misclassified)
    if drew_gallery:
        save_figure(gallery_figure(evaluation, model_inputs, image_size, explained_by), folder / GALLERY_FILE)
    else:
        (folder / GALLERY_FILE).unlink(missing_ok=True)  # an earlier report's mistakes are not this one's

    names = evaluation.class_names
    document = {
        **context,
        "temperature": evaluation.temperature,
        "summary": evaluation.summary,
        "calibration": calibration.as_dict() if calibration else None,
        "classes": [asdict(row) for row in evaluation.classes],
        "trust": trust_document(evaluation.trust),
        "confused_pairs": [{**asdict(pair), "total": pair.total} for pair in evaluation.confused_pairs],
        "misclassified": [
            {
                "file": sources[i],
                "true": names[int(evaluation.targets[i])],
                "predicted": names[int(evaluation.predicted[i])],
                "confidence": float(evaluation.confidence[i]),
            }
            for i in evaluation.misclassified
        ],
        "confusion_matrix": evaluation.confusion.tolist(),
    }
    write_text_atomically(folder / "evaluation.json", json.dumps(document, indent=1))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class", "precision", "recall", "f1", "support", *CSV_TRUST_COLUMNS])
    trust_rows = csv_trust_cells(evaluation.trust, len(evaluation.classes))
    for row, extra in zip(evaluation.classes, trust_rows, strict=True):
        metrics = [f"{row.precision:.4f}", f"{row.recall:.4f}", f"{row.f1:.4f}"]
        writer.writerow([row.name, *metrics, row.support, *extra])
    write_text_atomically(folder / "per_class.csv", buffer.getvalue())
    report = folder / REPORT_FILE
    write_text_atomically(report, _markdown(evaluation, context, calibration, drew_gallery))
    return report
