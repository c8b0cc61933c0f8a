"""The Gradio page that identifies an uploaded photo through the predictor.

Imports ``inference``, ``trust`` and ``data`` (to show training photos, decoded as training decoded them).
"""
