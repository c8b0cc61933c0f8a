"""The evaluation report's parts on trust: prediction-set coverage and size, gem families, the photos turned
away as unknown, and their per-class columns in ``report.md``, ``per_class.csv`` and ``evaluation.json``."""

from __future__ import annotations

import math
from dataclasses import asdict

from gem_lightning.evaluation.trust_metrics import NoveltyRow, TrustEvaluation

CSV_TRUST_COLUMNS = ("family", "set_coverage", "set_size")


def _percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def _share(value: float) -> str:
    return "-" if math.isnan(value) else _percent(value)


def _auroc(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _size(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def trust_lines(trust: TrustEvaluation, top1: float) -> list[str]:
    """The report's sections on prediction sets and gem families."""
    lines = ["## Prediction sets", ""]
    if not trust.sets:
        lines += [
            "Not measured: the checkpoint holds no fitted sets (evaluate it with calibrate=true), or this answer "
            "averages several models or views, which the sets were not fitted on.",
            "",
        ]
    else:
        lines += [
            f"Split-conformal sets (score `{trust.set_score}`, fitted on the validation split after the temperature): "
            "each image's set should hold its true class at least as often as asked, on images like the "
            "validation ones. Photos unlike them (another source, another background) can fall short; the "
            "coverage measured here says by how much.",
            "",
            "| coverage asked | coverage measured | mean set size | one class |",
            "|---|---|---|---|",
        ]
        for row in trust.sets:
            lines.append(
                f"| {_percent(row.target)} | {_percent(row.coverage)} | {row.mean_size:.2f} | {_percent(row.single)} |"
            )
        lines.append("")
    lines += [
        "## Gem families",
        "",
        f"Family top-1 (the most probable family, its classes' probabilities summed, is the true one): "
        f"{_percent(trust.family_top1)}, against class top-1 {_percent(top1)}. Answers unsure of the class "
        f"but sure of the family: {trust.family_answers}; the family was right in {trust.family_answers_right} "
        f"of them, the top class in {trust.family_answers_class_right}.",
        "",
    ]
    if trust.families:
        lines += ["| family | classes | images | class top-1 | family top-1 |", "|---|---|---|---|---|"]
        for row in trust.families:
            lines.append(
                f"| {row.family} | {row.classes} | {row.images} | {_percent(row.top1)} | {_percent(row.family_top1)} |"
            )
        lines.append("")
    return lines + selective_lines(trust) + novelty_lines(trust)


def selective_lines(trust: TrustEvaluation) -> list[str]:
    lines = [
        "## Answering only when sure",
        "",
        f"Risk-coverage area: {trust.risk_coverage_area:.4f} (the error of the k surest answers averaged over every k; "
        "0 when every wrong answer is less sure than every right one, the plain error when sureness says nothing).",
        "",
    ]
    if not trust.selective:
        return lines + ["Answers at a chosen accuracy: not measured (the checkpoint holds no fit; calibrate it).", ""]
    lines += [
        "With `selective.accuracy=A`, predict answers only photos at least as sure (calibrated top probability) as "
        "the validation answers that were right A of the time:",
        "",
        "| accuracy asked | top probability at least | answered | top-1 of those |",
        "|---|---|---|---|",
    ]
    for row in trust.selective:
        threshold = f"{row.threshold:.3f}" if math.isfinite(row.threshold) else "none answered"
        lines.append(
            f"| {_percent(row.accuracy)} | {threshold} | {_percent(row.answered)} | {_share(row.top1_answered)} |"
        )
    return lines + [""]


def novelty_lines(trust: TrustEvaluation) -> list[str]:
    lines = ["## Not one of the classes I know", ""]
    row = trust.novelty
    if row is None:
        return lines + ["Not measured: the checkpoint holds no novelty fit (evaluate it with calibrate=true).", ""]
    kept = "-" if math.isnan(row.top1_known) else _percent(row.top1_known)
    return lines + [
        f"A photo farther from every class centroid (cosine distance of backbone features) than {row.threshold:.4f}, "
        f'the distance within which {_percent(row.accept)} of the validation gems fall, is answered "not one of '
        f'the classes I know". Every image here is a gem of a known class, so each one turned away is a false '
        f"alarm: {row.unknown} of {row.images} ({_percent(row.unknown / row.images)}; about "
        f"{_percent(1 - row.accept)} is expected on photos like the validation ones, more on photos unlike them). "
        f"Of those, {row.unknown_wrong} had a wrong top class. Top-1 of the photos kept: {kept}. Median "
        f"distance: {row.median_distance:.4f}. How well the distance tells wrong answers from right ones: AUROC "
        f"{_auroc(row.wrong_answer_auroc)} (the calibrated top probability: "
        f"{_auroc(trust.confidence_wrong_answer_auroc)}; 0.5 is chance).",
        "",
        shift_line(row),
        "",
    ]


def shift_line(row: NoveltyRow) -> str:
    """One line on whether these photos, as a set, are unlike the calibration photos (evaluate prints it too)."""
    measured = f"one-sided Kolmogorov-Smirnov D {row.shift_statistic:.3f}, p {row.shift_p_value:.1e}"
    if row.shifted:
        return (
            f"**These photos are unlike the validation photos as a set**: farther from the classes ({measured}). "
            "The temperature, prediction sets and novelty threshold were fitted on validation photos and may not "
            "hold here; read every figure above with that in mind."
        )
    return f"As a set these photos are no farther from the classes than the validation photos ({measured})."


def trust_document(trust: TrustEvaluation | None) -> dict | None:
    if trust is None:
        return None
    document = asdict(trust)
    # JSON has no NaN: a class without images has no coverage.
    for key in ("class_coverage", "class_set_size"):
        document[key] = [None if math.isnan(value) else value for value in document[key]]
    for row in document["selective"]:  # nor Infinity (no share reached the accuracy)
        row.update({key: None for key in ("threshold", "top1_answered") if not math.isfinite(row[key])})
    if document["novelty"] is not None:  # nor Infinity (accept=1)
        novelty = document["novelty"]
        unmeasured = ("threshold", "top1_known", "wrong_answer_auroc")
        novelty.update({key: None for key in unmeasured if not math.isfinite(novelty[key])})
    if math.isnan(document["confidence_wrong_answer_auroc"]):
        document["confidence_wrong_answer_auroc"] = None
    return document


def class_trust_cells(trust: TrustEvaluation | None) -> tuple[list[str], list[list[str]]]:
    """(column names, cells per class in class order) that the per-class table of ``report.md`` adds."""
    if trust is None:
        return [], []
    names = ["family"]
    if trust.sets:
        names += [f"set coverage ({_percent(trust.coverage)})", "set size"]
    cells = []
    for index, family in enumerate(trust.class_families):
        row = [family]
        if trust.sets:
            row += [_share(trust.class_coverage[index]), _size(trust.class_set_size[index])]
        cells.append(row)
    return names, cells


def csv_trust_cells(trust: TrustEvaluation | None, classes: int) -> list[list[str]]:
    """``CSV_TRUST_COLUMNS`` for every class, in class order (empty where not measured)."""
    if trust is None:
        return [["", "", ""] for _ in range(classes)]
    rows = []
    for family, coverage, size in zip(trust.class_families, trust.class_coverage, trust.class_set_size, strict=True):
        measured = bool(trust.sets) and not math.isnan(coverage)
        rows.append([family, f"{coverage:.4f}" if measured else "", f"{size:.4f}" if measured else ""])
    return rows
