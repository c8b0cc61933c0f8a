"""An exclusive lock between processes on one machine, held on a lock file (POSIX ``flock``).

Used where several processes may do the same work at once: sweep workers and DDP ranks preparing the same
cache, and sweep workers taking the next trial of a study kept in a SQLite file. Without ``fcntl``
(Windows) nothing is locked and the caller is told so, to fall back on something weaker.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on the machines we test on
    fcntl = None


@contextmanager
def exclusive_lock(lock_file: Path) -> Iterator[bool]:
    """Hold ``lock_file`` exclusively (waiting for other holders); yields whether a lock is really held."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield False
        return
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
