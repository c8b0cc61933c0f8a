"""The network: the backbone registry (each entry beside its weights and mean/std), pretrained weights, the
LightningModule, MixUp/CutMix, learning-rate schedules and the checkpoint format.

Imports ``files`` and ``choices``: a network knows nothing of folders, splits or loops.
"""
