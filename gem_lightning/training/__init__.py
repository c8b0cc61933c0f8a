"""``train(cfg)``: the Trainer factory, the callbacks (TensorBoard layout, weight averaging), the optimiser
checks and the multirun summary.

Imports ``config``, ``data``, ``models`` and ``evaluation``; ``sweeps`` and train.py import it.
"""
