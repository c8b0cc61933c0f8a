"""The machine a run is on: every "auto" worker, thread, device and precision rule (read from the CPU
affinity), the glibc allocator setting, the garbage collector kept off what the imports made, child processes
that end with their parent, and Ctrl+C and SIGTERM held while a block runs that an exception must not cut in two.

Imports only ``errors``; every package may import it.
"""
