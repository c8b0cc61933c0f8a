"""The speed table: the report's plain pipeline beside ours, each figure measured in a fresh process.

Imports ``config``, ``data``, ``models``, ``training``, ``machine`` and ``files``.
"""
