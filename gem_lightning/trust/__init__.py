"""What an answer can be trusted for, from a model's calibrated probabilities and backbone features: conformal
prediction sets that hold the true class at a chosen rate, gem families (mineral groups) for answers unsure
between relatives, and "not one of the classes I know" for photos far from every class.

Imports ``choices``: evaluation and inference both stand on it.
"""
