"""How long jobs show their progress: rich's bar where someone watches, log lines where nobody does.

Used by one-off jobs (cutting out backgrounds, decoding images into the cache) and by each training epoch's
line; ``duration_words`` is the one way either says how long.
"""

from __future__ import annotations

import logging
import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

log = logging.getLogger(__name__)


def duration_words(seconds: float) -> str:
    """``4.2 s``, ``41 s``, ``18 min``, ``2.5 h``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class ProgressWithLines(Progress):
    """rich's Progress that, when its bar is not live (turned off, or the console is no terminal: nohup, SLURM,
    CI), logs a line as each task passes each tenth: ``<task>: 1200/3205 (37 %), 4.1/s, about 8 min left``."""

    def __init__(self, *columns, **kwargs) -> None:
        super().__init__(*columns, **kwargs)
        self._logs_lines = self.disable or not self.console.is_terminal
        # Per task: the last tenth logged, and where and when it started (a resumed job starts part done).
        self._started: dict[TaskID, tuple[int, float, float]] = {}

    def add_task(self, description: str, *args, **kwargs) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        task = self._tasks[task_id]
        tenth = int(10 * task.completed / task.total) if task.total else 0
        self._started[task_id] = (tenth, task.completed, time.monotonic())
        return task_id

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        if self._logs_lines:
            self._log_tenth(task_id)

    def _log_tenth(self, task_id: TaskID) -> None:
        task = self._tasks[task_id]
        last_tenth, first_completed, started = self._started[task_id]
        if not task.total:
            return
        tenth = int(10 * task.completed / task.total)
        if tenth <= last_tenth:
            return
        self._started[task_id] = (tenth, first_completed, started)
        rate = (task.completed - first_completed) / max(time.monotonic() - started, 1e-6)
        line = f"{task.description}: {task.completed:.0f}/{task.total:.0f} ({100 * task.completed / task.total:.0f} %)"
        line += f", {rate:.1f}/s"
        if task.completed < task.total and rate > 0:
            line += f", about {duration_words((task.total - task.completed) / rate)} left"
        log.info(line)


def progress_with_eta(enabled: bool = True) -> ProgressWithLines:
    """A rich bar showing done/total, time elapsed and the ETA; it stays on screen when done. Where it is not
    shown (``enabled`` false, or no terminal), a log line every tenth instead."""
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    return ProgressWithLines(*columns, disable=not enabled, transient=False)
