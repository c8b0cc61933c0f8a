"""Configs outside ``@hydra.main``: composing train.py's config for the other commands and the typed schemas
that check each group (data, model, optim, sweep) before any work.

Imports ``machine``, ``data.splits`` and ``models.backbones`` (for their choice lists); nothing imports it but
the commands, sweeps, training and bench.
"""
