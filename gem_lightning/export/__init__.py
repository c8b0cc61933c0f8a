"""A checkpoint as ONNX and TorchScript files, each checked against the predictor.

Imports ``inference``, ``models``, ``evaluation``, ``trust``, ``data`` and ``files``.
"""
