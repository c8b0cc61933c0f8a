"""Files on disk: atomic writes (temp + rename), content hashes, inter-process locks, paths as shown to users.

Imports only ``errors``; every package may import it.
"""
