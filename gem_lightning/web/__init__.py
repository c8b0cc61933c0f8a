"""The Gradio page that identifies an uploaded photo through the predictor, and keeps photos the user labels.

Imports ``inference``, ``trust``, ``files`` (to save labelled photos atomically) and ``data`` (to show training
photos, decoded as training decoded them).
"""
