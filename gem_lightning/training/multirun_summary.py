"""One table for a Hydra multirun: every job's overrides, best validation and test accuracy, epochs and time."""

# ``python train.py -m optim.lr=1e-4,3e-4 augment=seed,colour_preserving`` runs each job in its own folder
# under the sweep folder; each job leaves a ``metrics.json`` there (written by ``train()``). This Hydra
# callback (configured in ``conf/hydra/default.yaml``) reads them when the multirun ends, prints the table
# and writes it as ``summary.csv`` in the sweep folder. It reads files rather than remembering jobs in memory
# so it works with launchers that run jobs in other processes, and a job that failed still gets a row.
#
# A failed job does not end the multirun: ``train.py`` records why in the job folder (``failure.json``, see
# ``record_failed_job``) and returns, the next job runs, the table lists it as failed with the reason, and the
# multirun then exits with status 1. (Hydra itself would re-raise the first failure after the last job and
# skip this callback, so there would be no table at all.)

from __future__ import annotations

import csv
import io
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from gem_lightning.files.atomic_writes import write_text_atomically
from gem_lightning.files.shown_paths import shown_path

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
FAILURE_FILE = "failure.json"
SUMMARY_FILE = "summary.csv"
METRIC_COLUMNS = ("val/acc_best", "test/acc", "test_leak_free/acc")
COLUMNS = ("job", "varied", *METRIC_COLUMNS, "epochs", "seconds", "status", "overrides", "run_dir")


def record_failed_job(job_dir: Path, error: BaseException, user_error: BaseException | None) -> None:
    """Write why a multirun job failed into its folder, and say it: one line for a user error, else the traceback."""
    reason = str(user_error) if user_error is not None else f"{type(error).__name__}: {error}"
    if user_error is not None:
        log.error("job failed: %s", reason)
    else:
        log.error("job failed with a bug:\n%s", "".join(traceback.format_exception(error)))
    record = {"reason": reason.splitlines()[0][:500] if reason else type(error).__name__}
    write_text_atomically(Path(job_dir) / FAILURE_FILE, json.dumps(record, indent=1))


def _job_number(folder: Path) -> tuple[int, str]:
    return (int(folder.name), folder.name) if folder.name.isdigit() else (1 << 30, folder.name)


def collect_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """A row per job folder (one holding Hydra's ``.hydra/overrides.yaml``), in job order."""
    rows = []
    jobs = sorted((p.parent.parent for p in Path(sweep_dir).glob("*/.hydra/overrides.yaml")), key=_job_number)
    overrides_of = {job: OmegaConf.to_container(OmegaConf.load(job / ".hydra" / "overrides.yaml")) for job in jobs}
    # What tells the jobs apart: the overrides not shared by all of them (all of them for a single job).
    shared = set.intersection(*(set(o) for o in overrides_of.values())) if len(jobs) > 1 else set()
    for job_dir in jobs:
        overrides = overrides_of[job_dir]
        row = {
            "job": job_dir.name,
            "varied": " ".join(o for o in overrides if o not in shared),
            "overrides": " ".join(overrides),
            "run_dir": str(job_dir),
        }
        result_file = job_dir / METRICS_FILE
        if result_file.is_file():
            result = json.loads(result_file.read_text())
            metrics = result["metrics"]
            row.update({name: round(metrics[name], 6) for name in METRIC_COLUMNS if name in metrics})
            row.update(epochs=result["epochs"], seconds=round(result["seconds"], 1), status="done")
        elif (job_dir / FAILURE_FILE).is_file():
            row["status"] = f"failed: {json.loads((job_dir / FAILURE_FILE).read_text())['reason']}"
        else:
            row["status"] = "failed (killed, or no metrics.json)"
        rows.append(row)
    return rows


def render_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _cell(value: Any, column: str) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if column == "seconds" else f"{value:.4f}"
    return str(value)


class MultirunSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_rows(sweep_dir)
        if not rows:
            return
        summary = sweep_dir / SUMMARY_FILE
        write_text_atomically(summary, render_csv(rows))
        table = Table(title=f"multirun: {len(rows)} job(s)")
        # The full overrides and folders are in the CSV; the screen shows what tells the jobs apart.
        headers = {"val/acc_best": "val best", "test/acc": "test", "test_leak_free/acc": "test leak-free"}
        shown = [c for c in COLUMNS[: COLUMNS.index("overrides")] if any(c in row for row in rows)]
        widest = max(len(row["varied"]) for row in rows)
        for column in shown:
            if column == "varied":
                table.add_column(column, min_width=min(widest, 48), overflow="fold")
            else:
                justify = "left" if column == "status" else "right"
                table.add_column(headers.get(column, column), justify=justify, overflow="fold")
        for row in rows:
            table.add_row(*(_cell(row.get(column, ""), column) for column in shown))
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)  # a log file has no width; rich's 80 columns would drop columns
        console.print(table)
        print(f"summary: {shown_path(summary)}")  # plain print: a long path must stay copy-pasteable
        failed = [row["job"] for row in rows if row["status"] != "done"]
        if failed:
            print(f"error: {len(failed)} of {len(rows)} job(s) failed (job {', '.join(failed)})", file=sys.stderr)
            # Not an exception: Hydra turns those into a warning here. SystemExit passes through.
            sys.exit(1)
