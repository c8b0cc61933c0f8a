"""Make glibc keep freed memory in the process, so CPU training and inference stop page-faulting every step."""

# Why: glibc serves every allocation above its mmap threshold (dynamic, at most 32 MiB) with a fresh ``mmap``
# and hands it back with ``munmap`` as soon as it is freed. A CPU forward pass is made of exactly such blocks
# (activations at batch 48 and 224 px are tens to hundreds of MB), so each step maps, zero-fills page by page
# and unmaps hundreds of megabytes, and the kernel time can exceed the compute (README.md, "The CPU allocator",
# has the measured gain).
#
# The cure is to serve large blocks from the heap (``M_MMAP_MAX`` = 0) and never trim it (``M_TRIM_THRESHOLD``
# at its maximum): freed activations are reused by the next step. The price is that the process keeps its peak
# memory until it exits. Only glibc on Linux is touched; a user who set any ``MALLOC_*_`` variable, or sets
# ``GEM_LIGHTNING_SYSTEM_MALLOC=1``, keeps the allocator as configured.

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

log = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1
_TOP_PAD = 64 * 1024 * 1024  # grow the heap in 64 MiB steps instead of one brk call per large block


def keep_freed_memory() -> bool:
    """Configure glibc as described above; returns whether it was changed. Safe to call more than once."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if os.environ.get("GEM_LIGHTNING_SYSTEM_MALLOC") or any(
        name.startswith("MALLOC_") and name.endswith("_") for name in os.environ
    ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; all three or nothing matters little, so report the outcome only.
    changed = all(
        mallopt(parameter, value) == 1
        for parameter, value in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _INT_MAX), (M_TOP_PAD, _TOP_PAD))
    )
    if not changed:
        log.debug("glibc refused a mallopt setting; the allocator keeps its defaults in part")
    return changed
