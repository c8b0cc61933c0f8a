"""Composition of the real configs and their typed schemas."""
