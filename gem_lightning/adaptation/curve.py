"""How much a few labelled photos of a source help: mean recall on the rest of it, by photos per class.

For each labelled folder (a source), each number of photos per class N and each of ``draws`` random draws: N
photos of every class (at most half of a class's photos, so that each class keeps some to measure) become the
source's prototypes (``models.source_prototypes``), and the model adapted to them is measured on the other
photos of that source; an ensemble's members are each adapted to the same photos. N = 0 is the model as it is, on
all of them: the figure ``evaluate`` reports. One pass of each model per folder; every draw after it takes
milliseconds.

Written beside each other: ``adaptation.csv`` (every draw), ``adaptation.md`` (mean ± sd over the draws, a row per
source) and ``adaptation.png`` (a line per source); an ensemble's with ``Predictor.folder_suffix`` added to the
name (``adaptation-ensemble2-<key>.md``).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gem_lightning.adaptation.adapted_checkpoint import fit_adaptation, labelled_features
from gem_lightning.evaluation.metrics import recall_over_present
from gem_lightning.evaluation.report import save_figure
from gem_lightning.evaluation.trust_metrics import selective_row
from gem_lightning.files.atomic_writes import write_text_atomically
from gem_lightning.inference.loop import DatasetOutputs
from gem_lightning.inference.predictor import Predictor
from gem_lightning.models.classifier import GemClassifier
from gem_lightning.trust.prediction_sets import PredictionSets, set_quality
from gem_lightning.trust.selective_answers import REPORTED_ACCURACIES, SelectiveAnswers

CURVE_NAME = "adaptation"


# The coverage the curve measures of the sets: the one README's answers use by default (conf/prediction_sets).
SET_COVERAGE = 0.9
# The accuracy it asks of the answers given (trust.selective_answers), as the sources table.
SELECTIVE_ACCURACY = REPORTED_ACCURACIES[0]


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
    temperature: float  # the model's (N = 0) or fitted on the drawn photos; 1 for an ensemble (each member's own)
    set_coverage: float | None  # of the SET_COVERAGE sets (refitted on the drawn photos); None: no sets
    set_size: float | None  # their mean number of classes
    answered: float | None  # the share at least as sure as SELECTIVE_ACCURACY asks (None: no fit)
    top1_answered: float | None  # how many of those answers were right (nan when none was given)


def drawn_photos(targets: torch.Tensor, shots: int, seed: int) -> torch.Tensor:
    """(N,) bool: ``shots`` photos of each class at random (at most half of the class's photos)."""
    generator = np.random.default_rng(seed)
    chosen = torch.zeros(len(targets), dtype=torch.bool)
    for label in targets.unique().tolist():
        members = (targets == label).nonzero().flatten().numpy()
        count = min(shots, len(members) // 2)
        chosen[generator.choice(members, count, replace=False)] = True
    return chosen


def _subset(passed: DatasetOutputs, rows: torch.Tensor) -> DatasetOutputs:
    return DatasetOutputs(passed.outputs[rows], passed.targets[rows], passed.leaked[rows], passed.features[rows])


@dataclass(frozen=True)
class _Answers:
    """What a model, adapted or not, gives the measured photos: calibrated probabilities, and its fits."""

    probabilities: torch.Tensor
    temperature: float
    sets: PredictionSets | None
    selective: SelectiveAnswers | None


def _answers(model: GemClassifier, passed: DatasetOutputs, drawn: torch.Tensor, weight: float, source: str) -> _Answers:
    """``model`` adapted to the ``drawn`` photos (as it is when none is drawn), on the rest."""
    rest = _subset(passed, ~drawn)
    if not drawn.any():
        sets = PredictionSets(**model.prediction_sets) if model.prediction_sets else None
        selective = SelectiveAnswers(**model.selective_answers) if model.selective_answers else None
        temperature = float(model.temperature)
        return _Answers((rest.outputs / temperature).softmax(-1), temperature, sets, selective)
    fits = fit_adaptation(model, _subset(passed, drawn), weight, source)
    temperature = fits.calibration.temperature
    probabilities = (fits.logits(rest.outputs, rest.features) / temperature).softmax(-1)
    return _Answers(probabilities, temperature, fits.prediction_sets, fits.selective_answers)


def curve_points(
    models: Sequence[GemClassifier],
    source: str,
    passed: Sequence[DatasetOutputs],
    shots: Sequence[int],
    draws: int,
    weight: float,
) -> list[CurvePoint]:
    """Every (shots, draw) of one source, from one pass of each unadapted member (``passed[m]``: ``models[m]``'s
    raw logits and features of the same photos). Each member is adapted to the same drawn photos on its own
    features; an ensemble's answer is the mean of its members' calibrated probabilities, as ``predict`` gives for
    ``ckpt=[<the adapted checkpoints>]``, with no sets or selective fit (an ensemble has none)."""
    num_classes = len(models[0].class_names)
    targets = passed[0].targets
    points = []
    for count in shots:
        for draw in range(draws if count > 0 else 1):  # no photos drawn: every draw is the same
            drawn = drawn_photos(targets, count, seed=draw)
            members = [_answers(model, one, drawn, weight, source) for model, one in zip(models, passed, strict=True)]
            answers = members[0]
            if len(members) > 1:
                averaged = torch.stack([member.probabilities for member in members]).mean(dim=0)
                answers = _Answers(averaged, 1.0, None, None)
            rest = targets[~drawn]
            quality = None
            if answers.sets is not None:
                quality = set_quality(answers.sets.sets(answers.probabilities, SET_COVERAGE), rest)
            sure = None
            if answers.selective is not None:
                sure = selective_row(answers.selective, answers.probabilities, rest, SELECTIVE_ACCURACY)
            recall = recall_over_present(answers.probabilities, rest, num_classes)
            top1 = float((answers.probabilities.argmax(dim=1) == rest).double().mean())
            points.append(
                CurvePoint(
                    source,
                    count,
                    draw,
                    int(drawn.sum()),
                    len(rest),
                    recall["recall_mean"],
                    top1,
                    int(recall["classes_at_zero"]),
                    answers.temperature,
                    None if quality is None else quality.coverage,
                    None if quality is None else quality.mean_size,
                    None if sure is None else sure.answered,
                    None if sure is None else sure.top1_answered,
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
        points += curve_points(predictor.models, folder.resolve().name, passed, shots, draws, weight)
    table = Path(output_dir) / f"{CURVE_NAME}{predictor.folder_suffix}.md"  # an ensemble's beside one model's
    write_text_atomically(table.with_suffix(".csv"), points_csv(points))
    title = f"{predictor.describe_model()}, adapted with prototypes"
    write_text_atomically(table, points_markdown(points, title, ensemble=len(predictor.models) > 1))
    save_figure(curve_figure(points), table.with_suffix(".png"))
    return table, points


def _by_source_and_shots(points: Sequence[CurvePoint]) -> dict[str, dict[int, list[CurvePoint]]]:
    grouped: dict[str, dict[int, list[CurvePoint]]] = {}
    for point in points:
        grouped.setdefault(point.source, {}).setdefault(point.shots, []).append(point)
    return grouped


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _table(points: Sequence[CurvePoint], figure: str, share: bool = True) -> list[str]:
    """A row per source, a column per N: mean ± sd over the draws of each point's ``figure`` (as a percentage
    when it is a ``share``)."""
    shots = sorted({point.shots for point in points})
    lines = ["| source | " + " | ".join(f"N = {count}" for count in shots) + " |", "|---|" + "---|" * len(shots)]
    for source, by_shots in _by_source_and_shots(points).items():
        cells = []
        for count in shots:
            values = [getattr(point, figure) for point in by_shots.get(count, [])]
            if not values or None in values or any(math.isnan(value) for value in values):
                cells.append("–")
                continue
            scale, unit = (100, " %") if share else (1, "")
            mean, sd = _mean_sd([scale * value for value in values])
            cells.append(f"{mean:.1f}{unit}" if len(values) == 1 else f"{mean:.1f} ± {sd:.1f}{unit}")
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    return lines


def points_markdown(points: Sequence[CurvePoint], title: str, ensemble: bool = False) -> str:
    """The tables of ``adaptation.md``; those of sets and answers only where there are any (an ensemble has none)."""
    draws = max(point.draw for point in points) + 1
    sure = round(100 * SELECTIVE_ACCURACY)
    tables = [
        ("Mean recall:", "recall_mean", True),
        (f"Coverage of the {round(100 * SET_COVERAGE)} % prediction sets:", "set_coverage", True),
        ("Their mean size (classes):", "set_size", False),
        (f"Answered at selective.accuracy={SELECTIVE_ACCURACY}:", "answered", True),
        ("Top-1 of those answers:", "top1_answered", True),
    ]
    lines = [f"# {title}", ""]
    for heading, figure, share in tables:
        if any(getattr(point, figure) is not None for point in points):
            lines += [heading, "", *_table(points, figure, share), ""]
    fits = (
        "Sets and answers: refitted with the temperature on the drawn photos, each left out of its class's "
        f"prototype; answered: the photos at least as sure as those photos' answers that were {sure} % right."
    )
    if ensemble:
        fits = (
            "Each member adapted to the same drawn photos and its temperature refitted on them, each left out of "
            "its class's prototype; the members' calibrated probabilities averaged (an ensemble has no sets)."
        )
    lines += [
        "Measured on the photos of each source not used to adapt; N labelled photos per class (at most half of a "
        f"class's photos) drawn at random, mean ± sd over {draws} draws. Mean recall: over the classes present. "
        f"{fits} N = 0: the model as it is, with its own temperature and fits, on every photo.",
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
