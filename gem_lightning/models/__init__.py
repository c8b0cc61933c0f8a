"""The network: the backbone registry (each entry beside its weights and mean/std), pretrained weights, the
LightningModule, MixUp/CutMix, learning-rate schedules, the cached backbone features, and the checkpoint format.

Imports ``files``, ``machine``, ``evaluation.calibration`` and ``data.image_dataset``.
"""
