"""Optuna sweeps: the search space, the sweep plan, the study storage (SQLite, PostgreSQL), the worker that
runs trials through ``train(cfg)``, and the results table.

Imports ``config``, ``training``, ``files`` and ``choices``; only ``cli.sweep`` imports it.
"""
