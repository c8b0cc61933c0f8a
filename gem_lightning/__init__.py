"""gem-lightning: train, evaluate and reuse a gemstone identifier with Lightning and Hydra."""

__version__ = "0.1.0"
