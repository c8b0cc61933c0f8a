"""What an answer can be trusted for, from a model's calibrated probabilities: conformal prediction sets that
hold the true class at a chosen rate, and gem families (mineral groups) for answers unsure between relatives.

Imports ``choices``: evaluation and inference both stand on it.
"""
