"""``train(cfg)``: the Trainer factory, the callbacks (TensorBoard layout, weight averaging), the optimiser
checks and the multirun summary.

Imports ``data``, ``models``, ``inference``, ``evaluation``, ``machine``, ``files``; ``sweeps``, bench and
train.py import it.
"""
