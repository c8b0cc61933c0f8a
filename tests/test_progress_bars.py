"""Long jobs log a line at each tenth where their bar is not live (no terminal, or turned off)."""

from __future__ import annotations

import logging
import re

from gem_lightning.progress_bars import duration_words, progress_with_eta


def test_a_line_at_each_tenth_with_the_rate_and_time_left_when_the_bar_is_off(caplog):
    caplog.set_level(logging.INFO, logger="gem_lightning.progress_bars")
    with progress_with_eta(enabled=False) as progress:
        # A resumed job: 30 of 100 were done before; its rate counts only what this run does.
        task = progress.add_task("decoding", total=100, completed=30)
        for _ in range(70):
            progress.advance(task)
    lines = [record.getMessage() for record in caplog.records]
    assert [re.match(r"decoding: (\d+)/100 \((\d+) %\)", line).group(1) for line in lines] == [
        str(n) for n in range(40, 101, 10)
    ]
    assert all(re.search(r", [\d.]+/s, about [\d.]+ s left$", line) for line in lines[:-1]), lines
    assert re.search(r"100 %\), [\d.]+/s$", lines[-1])


def test_durations_in_words():
    assert [duration_words(s) for s in (4.24, 41, 1080, 9000)] == ["4.2 s", "41 s", "18 min", "2.5 h"]
