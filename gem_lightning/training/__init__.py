"""``train(cfg)``: the Trainer factory, the callbacks (TensorBoard layout, weight averaging, head-only features,
a log line per epoch), the label audit of the run's data, the optimiser checks and the multirun summary.

Imports ``config``, ``data``, ``models``, ``inference``, ``evaluation``, ``machine``, ``files``, ``choices`` and
``progress_bars``; ``sweeps``, bench and train.py import it.
"""
