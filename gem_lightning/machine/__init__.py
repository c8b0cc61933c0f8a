"""The machine a run is on: every "auto" worker, thread, device and precision rule (read from the CPU
affinity), the glibc allocator setting, and child processes that end with their parent.

Imports only ``errors``; every package may import it.
"""
