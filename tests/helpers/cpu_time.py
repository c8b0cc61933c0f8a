"""A pytest plugin: the tests that used the most CPU time, the processes they started included, listed at the
end of the run beside ``--durations``' wall times.

The suite is CPU-bound on CI's two cores (three test processes ran it no faster than two), so its length is the
CPU its tests use, and a test's wall time misleads: it stretches with whatever the other test process runs
beside it. Each phase (setup, call, teardown) is charged the CPU seconds of the test process and of every child
process that ended and was waited for during it (``getrusage``), grandchildren the child waited for included.
A server a fixture keeps running is charged to the teardown that stops it. A process nobody waits for is not
counted: one left to init when its parent ends (a fork server, such as the bench's, whose children do the
bench's measuring) or a daemon's (SLURM's jobs run under slurmd).
"""

from __future__ import annotations

import resource

import pytest

SHOWN = 20
_KEY = "cpu_seconds"


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# Read at the start of each phase; makereport follows the phase at once, in the same process.
_phase_start: dict[str, float] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    _phase_start[item.nodeid] = _cpu_seconds()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    _phase_start[item.nodeid] = _cpu_seconds()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    _phase_start[item.nodeid] = _cpu_seconds()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    start = _phase_start.pop(item.nodeid, None)
    if start is not None:
        # user_properties travel with the report from an xdist worker to the process that prints the summary.
        outcome.get_result().user_properties.append((_KEY, _cpu_seconds() - start))


class _Totals:
    def __init__(self) -> None:
        self.by_test: dict[str, float] = {}

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report) -> None:
        seconds = dict(report.user_properties).get(_KEY)
        if seconds is not None:
            self.by_test[report.nodeid] = self.by_test.get(report.nodeid, 0.0) + seconds

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.by_test:
            return
        total = sum(self.by_test.values())
        title = f"{SHOWN} tests that used the most CPU time (their processes included; all tests: {total:,.0f} s)"
        terminalreporter.write_sep("=", title)
        for nodeid, seconds in sorted(self.by_test.items(), key=lambda pair: -pair[1])[:SHOWN]:
            terminalreporter.write_line(f"{seconds:8.1f}s {nodeid}")


def pytest_configure(config) -> None:
    # Only where the summary is printed: an xdist worker only measures.
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Totals(), "cpu_time_totals")
