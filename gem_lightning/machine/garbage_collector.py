"""Keep Python's cyclic garbage collector off the objects a command's imports made: they live until it exits."""

# Why: importing torch, torchvision, Lightning and Hydra leaves about half a million tracked objects (modules,
# classes, functions) that never become garbage. Every full collection during a run walks all of them, and so
# does the last one when the interpreter exits. ``gc.freeze()`` moves them to a generation the collector never
# visits (README.md, "Speed", has the measured saving); what is made after it is
# collected as before. One full collection first, so that garbage from before the call (a host process such as
# a test session that runs commands in-process) is freed rather than kept for good.

from __future__ import annotations

import gc


def freeze_imported_objects() -> bool:
    """Collect, then exempt every object alive now from later collections; once per process (a second call, as
    in a multirun's next job, does nothing). Call it after a command's imports, before its work. Returns whether
    this call froze them."""
    if gc.get_freeze_count():
        return False
    gc.collect()
    gc.freeze()
    return True
