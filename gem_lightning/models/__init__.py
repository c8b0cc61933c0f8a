"""The network: the backbone registry (each entry beside its weights and mean/std), pretrained weights, the
LightningModule, MixUp/CutMix, learning-rate schedules, the cached backbone features, and the checkpoint format.

Imports ``files``, ``choices``, ``data`` (the image dataset and arrays) and ``inference.loop`` (feature caching).
"""
