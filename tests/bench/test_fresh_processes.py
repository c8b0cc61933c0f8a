"""The bench's measuring processes: ours forked afresh from one process that imported our side, the plain side
in processes that hold torch and torchvision only; results in order, a failure raised where the bench runs."""

from __future__ import annotations

import os
import sys

import pytest

from gem_lightning.bench.fresh_processes import OUR_IMPORTS, each_in_a_fresh_fork, in_fresh_process

PROBED = ("torch", "lightning", "gem_lightning.bench.our_pipeline")


def _where(tag: str) -> dict:
    imported = [name for name in PROBED if name in sys.modules]
    return {"tag": tag, "pid": os.getpid(), "parent": os.getppid(), "imported": imported}


def _fails() -> dict:
    raise ValueError("this measurement broke")


def test_ours_are_forks_of_one_process_that_imported_our_side_and_the_plain_side_holds_torch_only():
    assert set(PROBED) <= set(OUR_IMPORTS) | {"lightning"}
    first, second = each_in_a_fresh_fork([(_where, ("first",)), (_where, ("second",))])
    assert (first["tag"], second["tag"]) == ("first", "second")
    assert first["pid"] != second["pid"], "two measurements shared a process"
    assert first["parent"] == second["parent"] != os.getpid(), "not forked from one process of their own"
    assert first["imported"] == second["imported"] == list(PROBED)
    plain = in_fresh_process(_where, "plain")
    assert plain["pid"] != os.getpid() and plain["imported"] == ["torch"]


def test_a_measurement_that_fails_or_dies_is_an_error_of_the_bench():
    with pytest.raises(ValueError, match="this measurement broke"):
        each_in_a_fresh_fork([(_where, ("before",)), (_fails, ())])
    with pytest.raises(RuntimeError, match=r"_exit ended without a result \(exit code 3\)"):
        each_in_a_fresh_fork([(os._exit, (3,))])
