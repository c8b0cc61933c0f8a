"""The machine a run is on: every "auto" worker, thread, device and precision rule (read from the CPU
affinity), the glibc allocator setting, and child processes that end with their parent.

Imports ``files`` and ``errors`` only; every other package may import it.
"""
