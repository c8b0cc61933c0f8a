"""Child processes that end when their parent does, however it ends (SIGKILL included)."""

# A worker pool's processes are not told when their parent is killed: background-removal workers kept running,
# about 1.3 GB each, still writing cut-outs, after ``kill -9`` of ``prepare``. ``die_with_parent`` (called first
# in each such child) watches for the parent's exit: on POSIX a child whose parent died is re-parented, so its
# parent pid changes, and the child then exits at once. Polling, rather than Linux's PR_SET_PDEATHSIG, because
# that signal fires when the *thread* that started the child ends, and pools start children from helper threads.

from __future__ import annotations

import os
import threading
import time


def die_with_parent(poll_seconds: float = 0.5) -> None:
    """Exit this process (status 1) within ``poll_seconds`` of its parent's end."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)  # nothing to clean up: every file we write is written atomically

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
