"""How much a few labelled photos of a source help: mean recall on the rest of it, by photos per class.

For each labelled folder (a source), each number of photos per class N and each of ``draws`` random draws: N
photos of every class (at most half of a class's photos, so that each class keeps some to measure) become the
source's prototypes (``models.source_prototypes``), and the model adapted to them is measured on the other
photos of that source. N = 0 is the model as it is, on all of them: the figure ``evaluate`` reports. One pass of
the model per folder; every draw after it takes milliseconds.

Written beside each other: ``adaptation.csv`` (every draw), ``adaptation.md`` (mean ± sd over the draws, a row per
source) and ``adaptation.png`` (a line per source).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gem_lightning.adaptation.adapted_checkpoint import labelled_features
from gem_lightning.evaluation.metrics import recall_over_present
from gem_lightning.evaluation.report import save_figure
from gem_lightning.files.atomic_writes import write_text_atomically
from gem_lightning.inference.loop import DatasetOutputs
from gem_lightning.inference.predictor import Predictor
from gem_lightning.models.source_prototypes import SourcePrototypes

CURVE_NAME = "adaptation"


@dataclass(frozen=True)
class CurvePoint:
    source: str
    shots: int  # labelled photos per class asked for
    draw: int
    adapted_photos: int  # how many photos the prototypes averaged, all classes together
    measured_photos: int  # the rest, measured
    recall_mean: float  # over the classes with photos among the rest
    top1: float
    classes_at_zero: int


def drawn_photos(targets: torch.Tensor, shots: int, seed: int) -> torch.Tensor:
    """(N,) bool: ``shots`` photos of each class at random (at most half of the class's photos)."""
    generator = np.random.default_rng(seed)
    chosen = torch.zeros(len(targets), dtype=torch.bool)
    for label in targets.unique().tolist():
        members = (targets == label).nonzero().flatten().numpy()
        count = min(shots, len(members) // 2)
        chosen[generator.choice(members, count, replace=False)] = True
    return chosen


def curve_points(
    source: str, passed: DatasetOutputs, num_classes: int, shots: Sequence[int], draws: int, weight: float
) -> list[CurvePoint]:
    """Every (shots, draw) of one source, from one pass of the unadapted model (raw logits and features)."""
    points = []
    for count in shots:
        for draw in range(draws if count > 0 else 1):  # no photos drawn: every draw is the same
            adapted = drawn_photos(passed.targets, count, seed=draw)
            logits, targets = passed.outputs[~adapted], passed.targets[~adapted]
            if adapted.any():
                prototypes = SourcePrototypes.fit(
                    passed.features[adapted], passed.targets[adapted], num_classes, weight, source
                )
                logits = logits + prototypes.added_logits(passed.features[~adapted])
            recall = recall_over_present(logits, targets, num_classes)
            top1 = float((logits.argmax(dim=1) == targets).double().mean())
            points.append(
                CurvePoint(
                    source,
                    count,
                    draw,
                    int(adapted.sum()),
                    len(targets),
                    recall["recall_mean"],
                    top1,
                    int(recall["classes_at_zero"]),
                )
            )
    return points


def adaptation_curve(
    predictor: Predictor,
    folders: Sequence[str | Path],
    shots: Sequence[int],
    draws: int,
    weight: float,
    output_dir: Path,
) -> tuple[Path, list[CurvePoint]]:
    """Measure every folder and write the csv, table and figure into ``output_dir``; returns the table's path."""
    points = []
    for folder in map(Path, folders):
        passed = labelled_features(predictor, folder)
        points += curve_points(folder.resolve().name, passed, len(predictor.class_names), shots, draws, weight)
    table = Path(output_dir) / f"{CURVE_NAME}.md"
    write_text_atomically(table.with_suffix(".csv"), points_csv(points))
    write_text_atomically(table, points_markdown(points, f"{predictor.describe_model()}, adapted with prototypes"))
    save_figure(curve_figure(points), table.with_suffix(".png"))
    return table, points


def _by_source_and_shots(points: Sequence[CurvePoint]) -> dict[str, dict[int, list[CurvePoint]]]:
    grouped: dict[str, dict[int, list[CurvePoint]]] = {}
    for point in points:
        grouped.setdefault(point.source, {}).setdefault(point.shots, []).append(point)
    return grouped


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def points_markdown(points: Sequence[CurvePoint], title: str) -> str:
    grouped = _by_source_and_shots(points)
    shots = sorted({point.shots for point in points})
    draws = max(point.draw for point in points) + 1
    lines = [
        f"# {title}",
        "",
        "| source | " + " | ".join(f"N = {count}" for count in shots) + " |",
        "|---|" + "---|" * len(shots),
    ]
    for source, by_shots in grouped.items():
        cells = []
        for count in shots:
            mean, sd = _mean_sd([100 * point.recall_mean for point in by_shots.get(count, [])] or [float("nan")])
            cells.append(f"{mean:.1f} %" if count == 0 else f"{mean:.1f} ± {sd:.1f} %")
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Mean recall over the classes present, on the photos of each source not used to adapt; N labelled photos "
        f"per class (at most half of a class's photos) drawn at random, mean ± sd over {draws} draws. N = 0: the "
        "model as it is, on every photo.",
    ]
    return "\n".join(lines) + "\n"


def points_csv(points: Sequence[CurvePoint]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(asdict(points[0])), lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(point) for point in points)
    return buffer.getvalue()


def curve_figure(points: Sequence[CurvePoint]) -> Figure:
    figure = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for source, by_shots in _by_source_and_shots(points).items():
        counts = sorted(by_shots)
        stats = [_mean_sd([100 * point.recall_mean for point in by_shots[count]]) for count in counts]
        means, sds = zip(*stats, strict=True)
        axes.errorbar(counts, means, yerr=sds, marker="o", capsize=3, label=source)
    axes.set_xlabel("labelled photos per class of the source")
    axes.set_ylabel("mean recall on the rest of the source (%)")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure
