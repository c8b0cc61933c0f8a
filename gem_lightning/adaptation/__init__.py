"""Adapting a trained model to a user's own source of photos (a shop, a phone, a lab) with a few labelled ones:
the adapted checkpoint (class prototypes of the source, with the temperature, sets and novelty rule refitted on
its photos) and the curve of how much N photos per class help.

Imports ``models``, ``inference``, ``evaluation``, ``trust`` and ``files``.
"""
