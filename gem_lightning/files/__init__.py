"""Files on disk: atomic writes (temp + rename), content hashes, inter-process locks, paths as shown to users.

Imports only the standard library, numpy and ``gem_lightning.errors``; every other package may import it.
"""
