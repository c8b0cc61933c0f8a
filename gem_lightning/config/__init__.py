"""Configs outside ``@hydra.main``: composing train.py's config for the other commands and the typed schemas
that check each group (data, model, optim, sweep) before any work.

Imports ``machine``, ``data.splits`` and ``models.backbones`` for their choice lists; the commands, sweeps and
bench import it.
"""
