"""Hold Ctrl+C and SIGTERM while a block runs that an exception must not cut in two; they take effect after it."""

# Python raises KeyboardInterrupt wherever the main thread happens to be. Inside a database client that can leave
# the process holding its own lock: an interrupt landing in SQLAlchemy between an SQLite write and its commit kept
# the write lock (seen on 30 of ~1,200 interruption points of one Optuna ``trial.report``, and once a SQLAlchemy
# thread lock for good), so recording the interrupted trial then waited out the 120 s busy timeout. Blocking the
# signals with ``pthread_sigmask`` is not enough: the kernel hands a process's signal to any thread that does not
# block it (a heartbeat, a TensorBoard writer) and Python then runs the handler in the main thread anyway. So the
# handlers themselves are swapped for one that only notes the signal, and the signal is raised again at the end.

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl+C and SIGTERM received inside the block are raised again, once each, when it ends (through whatever
    handlers were installed before it). Holds nest. Outside the main thread, which receives no Python signal
    handling, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def note(signum: int, frame: object) -> None:
        if signum not in received:
            received.append(signum)

    # A handler installed outside Python reads as None and could not be put back: such a signal is left alone.
    previous = {signum: signal.signal(signum, note) for signum in HELD_SIGNALS if signal.getsignal(signum) is not None}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in received:
            signal.raise_signal(signum)
