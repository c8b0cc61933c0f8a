"""The network: the backbone registry (each entry beside its weights and mean/std), pretrained weights, the
LightningModule and its white balance, a user's source prototypes added to its head, MixUp/CutMix, learning-rate
schedules and the checkpoint format.

Imports ``files``, ``choices`` and ``trust`` (the class centroids the prototypes share with the novelty rule): a
network knows nothing of folders, splits or loops.
"""
