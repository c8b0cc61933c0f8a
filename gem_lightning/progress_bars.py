"""The progress bar of long one-off jobs (cutting out backgrounds, decoding images into the cache)."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_with_eta(enabled: bool = True) -> Progress:
    """A rich bar showing done/total, time elapsed and the ETA; it stays on screen when done."""
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    return Progress(*columns, disable=not enabled, transient=False)
