"""How good a checkpoint is: metrics (leak-free first), temperature calibration, prediction-set coverage,
family accuracy and photos turned away as unknown, the report, and the evaluation of a checkpoint on its run's
test split or any labelled folder.

Imports ``data``, ``models``, ``inference``, ``trust``, ``files`` and ``choices``.
"""
