"""Configs outside ``@hydra.main``: composing train.py's config for the other commands, the typed schemas that
check each group (data, model, optim, sweep), the check that every key has a value before any work, and the
project folder.

Imports ``data`` and ``models`` (the schemas are built from the data module's and the classifier's signatures)
and ``machine``; ``project_folder`` imports nothing, so the sweep launchers need only it. The commands, training,
sweeps and bench import this package.
"""
