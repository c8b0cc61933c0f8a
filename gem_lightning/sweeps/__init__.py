"""Optuna sweeps: the search space, the sweep plan, the study storage (SQLite, PostgreSQL), the worker that
runs trials through ``train(cfg)``, the launchers that start workers (processes here, a SLURM job array), and
the results table.

Imports ``config``, ``training``, ``machine``, ``files`` and ``choices``; only ``cli.sweep`` imports it.
"""
