"""Where each bench measurement runs: a new process that has imported its side's libraries and done no work."""

# No data, caches, allocator state or threads of this process or of an earlier measurement may colour a figure,
# and neither side's peak memory may hold the other's libraries. The plain side imports torch and torchvision
# only: each of its measurements is a child of a fork server that has imported just those two. Ours also
# imports Lightning and this project (about 4 s more a process here), so its measurements are forked, each afresh,
# from one process that has imported all of that and done nothing else. Every such process ends with its parent.

from __future__ import annotations

import importlib
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

from gem_lightning.machine.child_processes import die_with_parent

PLAIN_IMPORTS = ["torch", "torchvision"]
# What every function of ``our_pipeline`` imports, so that a fork of a process holding them imports nothing.
OUR_IMPORTS = [
    *PLAIN_IMPORTS,
    "hydra",
    "lightning.pytorch",
    "gem_lightning.bench.our_pipeline",
    "gem_lightning.config.composition",
    "gem_lightning.config.schema",
    "gem_lightning.data.batch_augmentation",
    "gem_lightning.data.datamodule",
    "gem_lightning.models.classifier",
    "gem_lightning.training.trainer_factory",
]

Call = tuple[Callable[..., dict], tuple]


def _fork_server_pool() -> ProcessPoolExecutor:
    fresh = multiprocessing.get_context("forkserver")
    fresh.set_forkserver_preload(PLAIN_IMPORTS)
    return ProcessPoolExecutor(1, mp_context=fresh)


def _call_as_child(function: Callable[..., dict], args: tuple) -> dict:
    die_with_parent()
    return function(*args)


def in_fresh_process(function: Callable[..., dict], *args) -> dict:
    """``function(*args)`` in a new child of a fork server that has imported ``PLAIN_IMPORTS`` only."""
    with _fork_server_pool() as pool:
        return pool.submit(_call_as_child, function, args).result()


def _send_result(connection, function: Callable[..., dict], args: tuple) -> None:
    die_with_parent()
    try:
        connection.send((True, function(*args)))
    except BaseException as error:  # the forking process raises it again
        connection.send((False, error))


def _fork_each(calls: Sequence[Call]) -> list[dict]:
    """In a process that has imported ``OUR_IMPORTS`` and done nothing else: each call in a fork of it."""
    die_with_parent()
    for name in OUR_IMPORTS:
        importlib.import_module(name)
    fork = multiprocessing.get_context("fork")
    results = []
    for function, args in calls:
        receiving, sending = fork.Pipe(duplex=False)
        child = fork.Process(target=_send_result, args=(sending, function, args))
        child.start()
        sending.close()
        try:
            ok, result = receiving.recv()
        except EOFError:
            child.join()
            raise RuntimeError(f"{function.__name__} ended without a result (exit code {child.exitcode})") from None
        child.join()
        if not ok:
            raise result
        results.append(result)
    return results


def each_in_a_fresh_fork(calls: Sequence[Call]) -> list[dict]:
    """Each ``(function, args)`` in its own fork of one new process that has imported ``OUR_IMPORTS``, in order;
    their results in the same order."""
    with _fork_server_pool() as pool:
        return pool.submit(_fork_each, list(calls)).result()
