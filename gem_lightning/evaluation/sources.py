"""Several labelled sources at once: a report folder each, and one table that sets them side by side.

``evaluate input=[a/,b/,...]`` (or the preset ``sources=other_sources``) evaluates the run's own split (when its
data can be rebuilt from the checkpoint), then each folder as a user's photos, each into its own report folder
as a single evaluation would write it, and then ``sources.md`` and ``sources.csv`` beside them: a row per source
with the figures of that source's ``evaluation.json``, so the table and the reports cannot disagree.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from gem_lightning.errors import GemLightningError
from gem_lightning.evaluation.checkpoint_evaluation import (
    EvaluationRun,
    datamodule_of,
    evaluate_checkpoint,
    run_dir_of,
    split_parts,
)
from gem_lightning.files.atomic_writes import write_text_atomically
from gem_lightning.inference.predictor import Predictor
from gem_lightning.trust.novelty import SHIFT_P_VALUE, unlike_calibration
from gem_lightning.trust.selective_answers import REPORTED_ACCURACIES

log = logging.getLogger(__name__)

TABLE_NAME = "sources"
SET_TARGETS = (80, 90, 95)  # the coverages every report measures (conf/prediction_sets)
SELECTIVE_ACCURACY = REPORTED_ACCURACIES[0]  # the answers sure enough to be this often right, in the table


@dataclass(frozen=True)
class SourceRow:
    """One source's line of the table: its name and its evaluation's summary."""

    source: str
    summary: dict[str, float]

    def cells(self) -> dict[str, str]:
        """The row as the table prints it; the leak-free top-1/top-5 where the source has one (the run's split)."""
        s = self.summary
        leak_free = "top1_leak_free" in s
        cells = {
            "source": self.source + (" (leak-free)" if leak_free else ""),
            "photos": f"{int(s['images'])}",
            "classes": f"{int(s['classes_present'])}",
            "top-1": _share(s["top1_leak_free" if leak_free else "top1"]),
            "top-5": _share(s["top5_leak_free" if leak_free else "top5"]),
            "mean recall": _share(s["recall_mean"]),
            "classes at 0": f"{int(s['classes_at_zero'])}",
        }
        for target in SET_TARGETS:
            cells[f"{target} % sets cover"] = _share(s.get(f"set_coverage_{target}"))
        cells["ECE before → after T"] = f"{s['ece_before']:.3f} → {s['ece_after']:.3f}"
        answered = None if "unknown_share" not in s else 1.0 - s["unknown_share"]
        cells["answered"] = _share(answered)
        cells["top-1 of those"] = _share(s.get("top1_known"))
        cells["AURC"] = _figure(s.get("risk_coverage_area"))
        cells["wrong-answer AUROC: novelty / confidence"] = (
            f"{_figure(s.get('novelty_wrong_auroc'))} / {_figure(s.get('confidence_wrong_auroc'))}"
        )
        sure = round(100 * SELECTIVE_ACCURACY)
        cells[f"sure at {sure} %"] = _share(s.get(f"answered_at_{sure}"))
        cells["top-1 of the sure"] = _share(s.get(f"top1_answered_at_{sure}"))
        shift = s.get("novelty_shift_d")
        unlike = "–" if shift is None else ("yes" if unlike_calibration(s["novelty_shift_p"]) else "no")
        cells["unlike validation (KS D)"] = "–" if shift is None else f"{unlike} ({shift:.2f})"
        return cells


def _figure(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def table_markdown(rows: Sequence[SourceRow], title: str) -> str:
    """``sources.md``: the title, the table, and what its columns mean."""
    cells = [row.cells() for row in rows]
    header = list(cells[0])
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row[key] for key in header) + " |" for row in cells]
    lines += [
        "",
        "Mean recall: over the classes with photos in that source. Classes at 0: classes with photos there none of "
        "which was recognised. Sets: conformal prediction sets fitted on the run's validation split, and the share "
        'of photos whose set holds the true class. Answered: the share not turned away as "not one of the classes '
        'I know", and the top-1 accuracy on those. Unlike validation: whether the photos, as a set, are farther from '
        f"the classes than the validation photos (one-sided Kolmogorov-Smirnov on the novelty distances, p < "
        f"{SHIFT_P_VALUE}). AURC: the error of the k surest answers averaged over every k (lower is better). "
        "Wrong-answer AUROC: how well the novelty distance, and the calibrated top probability, tell wrong answers "
        "from right ones (0.5: not at all). Sure at "
        f"{round(100 * SELECTIVE_ACCURACY)} %: the share of photos at least as sure as the validation answers that "
        "were right that often, and the top-1 of those (what selective.accuracy gives). Each source's own report "
        "is in the folder of its name.",
    ]
    return "\n".join(lines) + "\n"


def table_csv(rows: Sequence[SourceRow]) -> str:
    """``sources.csv``: every figure of every summary, unrounded, one row per source."""
    keys = sorted({key for row in rows for key in row.summary})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source", *keys])
    for row in rows:
        writer.writerow([row.source, *(row.summary.get(key, "") for key in keys)])
    return buffer.getvalue()


def evaluate_sources(
    predictor: Predictor,
    split: str,
    folders: Sequence[str | Path],
    calibrate_first: bool,
    output_dir: str | Path | None,
    *,
    answer_config: DictConfig,
) -> tuple[Path, list[EvaluationRun]]:
    """Evaluate the run's ``split`` (and, for a run with ``data.extra_roots``, each source's part of it) and every
    folder; returns ``sources.md``'s path and the runs, split first.

    Reports go to ``<output_dir or run dir/evaluation>/<split or folder name>/``. Without the run's data (moved,
    or a checkpoint without its config) the split is left out with a logged line, unless ``calibrate_first``
    needs it.
    """
    folders = [Path(folder) for folder in folders]
    names = [folder.resolve().name + predictor.folder_suffix for folder in folders]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise GemLightningError(
            f"input= lists several folders named {', '.join(repeated)}: their reports would share a folder; "
            "give each source a folder of its own name"
        )
    base = Path(output_dir) if output_dir else run_dir_of(predictor.checkpoint) / "evaluation"
    datamodule = None
    try:
        datamodule = datamodule_of(predictor.model, predictor.checkpoint)
    except GemLightningError as error:
        if calibrate_first:
            raise
        log.warning("the run's %s split is left out of the table: %s", split, error)
    runs, rows = [], []
    if datamodule is not None:
        report_folder = base / (split + predictor.folder_suffix)
        run = evaluate_checkpoint(
            predictor, split, None, calibrate_first, report_folder, datamodule, answer_config=answer_config
        )
        runs.append(run)
        rows.append(SourceRow(f"{split} split{predictor.folder_suffix}", run.evaluation.summary))
        for source in split_parts(datamodule, split):
            name = f"{split}-{source}{predictor.folder_suffix}"
            run = evaluate_checkpoint(
                predictor, split, None, False, base / name, datamodule, split_source=source, answer_config=answer_config
            )
            runs.append(run)
            rows.append(SourceRow(f"{split} split, {source}{predictor.folder_suffix}", run.evaluation.summary))
    for folder, name in zip(folders, names, strict=True):
        run = evaluate_checkpoint(predictor, split, folder, False, base / name, datamodule, answer_config=answer_config)
        runs.append(run)
        rows.append(SourceRow(name, run.evaluation.summary))
    title = f"{predictor.describe_model()} on {len(rows)} sources"
    table = base / f"{TABLE_NAME}{predictor.folder_suffix}.md"
    write_text_atomically(table, table_markdown(rows, title))
    write_text_atomically(table.with_suffix(".csv"), table_csv(rows))
    return table, runs
