"""A pytest plugin: under CI (``.ci/run`` exports CI=true) a skipped test is a failed one, except for tests
marked ``cuda``. CI has the packages, servers and ../shared every other test needs, so a skip there hides a
test that no longer runs."""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        if item.get_closest_marker("cuda") is None:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            report.outcome = "failed"
            report.longrepr = f"skipped under CI, where only tests marked cuda may skip: {reason}"
