"""``train(cfg)``: the Trainer factory, the callbacks (TensorBoard layout, weight averaging, head-only features),
the label audit of the run's data, the optimiser checks and the multirun summary.

Imports ``config``, ``data``, ``models``, ``inference``, ``evaluation``, ``machine``, ``files`` and ``choices``;
``sweeps``, bench and train.py import it.
"""
