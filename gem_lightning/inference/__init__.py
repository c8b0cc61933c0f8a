"""The one inference loop and what stands on it: logits and features over a dataset (with test-time views), the
cached backbone features of a run's images, Grad-CAM heat maps, the predictor that identifies photos from one
checkpoint or an ensemble, and the search for a user's photos.

Imports ``data``, ``models``, ``machine``, ``files`` and ``choices``.
"""
