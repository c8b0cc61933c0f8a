"""The entry points' freeze: objects alive after a command's imports leave the collector; garbage does not."""

from __future__ import annotations

import subprocess
import sys

# In a fresh interpreter: a freeze is for the whole process, and this test session must keep its own collector.
PROBE = """
import gc, weakref
from gem_lightning.machine.garbage_collector import freeze_imported_objects

class Node:
    pass

def cycle():
    node = Node()
    node.itself = node
    return weakref.ref(node)

garbage_before = cycle()  # unreachable, but only a collection frees a cycle
alive = Node()
assert gc.get_freeze_count() == 0
assert freeze_imported_objects()
assert garbage_before() is None, "garbage from before the call was frozen for good instead of freed"
frozen = gc.get_freeze_count()
assert frozen > 1000, frozen  # the interpreter's and this module's objects, alive among them
assert not freeze_imported_objects() and gc.get_freeze_count() == frozen, "a second call froze again"
garbage_after = cycle()
gc.collect()
assert garbage_after() is None, "garbage made after the freeze was not collected"
print("ok")
"""


def test_a_freeze_exempts_what_is_alive_once_and_leaves_garbage_to_the_collector():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
