"""The Gradio page that identifies an uploaded photo through the predictor.

Imports ``inference`` and ``trust``.
"""
