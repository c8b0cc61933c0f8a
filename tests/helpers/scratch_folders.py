"""Folders that module- and session-scoped fixtures write into, removed when their tests passed.

pytest's ``tmp_path_retention_policy = "failed"`` (pyproject.toml) removes a passing test's ``tmp_path`` at once,
but not what a wider fixture made with ``tmp_path_factory.mktemp``: the README tests' fresh clones alone hold
about 9 GB of checkpoints by the end of a run. A full disk fails whatever test writes next, so these go too,
kept (like a failing test's ``tmp_path``) only when a test failed while they were in use.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def fixture_folder(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, name: str
) -> Iterator[Path]:
    """A new folder under pytest's base temp, removed after the fixture's last user unless a test failed."""
    folder = tmp_path_factory.mktemp(name)
    failures_before = request.session.testsfailed
    yield folder
    if request.session.testsfailed == failures_before:
        shutil.rmtree(folder, ignore_errors=True)
