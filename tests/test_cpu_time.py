"""The CPU-time summary (tests/helpers/cpu_time.py), checked by pytest run on a file of three tests, in two xdist
processes as the suite runs: one burns CPU in a child process, one in its own, one only waits."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers.workplace import checkout_env

THREE_TESTS = """
import subprocess, sys, time

BURN = "import time\\nend = time.process_time() + 1.5\\nwhile time.process_time() < end: pass"

def test_child_burns():
    subprocess.run([sys.executable, "-c", BURN], check=True)

def test_self_burns():
    exec(BURN)

def test_waits():
    time.sleep(1.5)
"""


def test_the_summary_charges_each_test_its_own_and_its_childrens_cpu_time(tmp_path):
    (tmp_path / "test_three.py").write_text(THREE_TESTS)
    command = [sys.executable, "-m", "pytest", "-p", "tests.helpers.cpu_time", "-p", "no:cacheprovider", "-q"]
    command += ["-n", "2", str(tmp_path / "test_three.py")]
    out = subprocess.run(command, cwd=tmp_path, env=checkout_env(), capture_output=True, text=True, timeout=120).stdout
    assert "3 passed" in out, out
    listed = dict(
        (name, float(seconds)) for seconds, name in re.findall(r"^ +([\d.]+)s \S+::(test_\w+)$", out, re.MULTILINE)
    )
    assert set(listed) == {"test_child_burns", "test_self_burns", "test_waits"}, out
    assert listed["test_child_burns"] == pytest.approx(1.5, abs=0.4), out  # the child's 1.5 s, and its start-up
    assert listed["test_self_burns"] == pytest.approx(1.5, abs=0.3), out
    assert listed["test_waits"] < 0.3, out  # 1.5 s of wall time, next to no CPU
    total = float(re.search(r"all tests: ([\d,]+) s\)", out).group(1).replace(",", ""))
    assert total == pytest.approx(sum(listed.values()), abs=1), out
