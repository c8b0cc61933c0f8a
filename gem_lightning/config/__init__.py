"""Configs outside ``@hydra.main``: composing train.py's config for the other commands, the typed schemas that
check each group (data, model, optim, sweep) and the check that every key has a value, before any work.

Imports ``machine``, ``data.splits`` and ``models.backbones`` for their choice lists; the commands, training,
sweeps and bench import it.
"""
