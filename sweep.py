"""Optuna sweep over train.py runs: ``python sweep.py experiment=demo --n-trials 12`` (see README.md)."""

import sys

from gem_lightning.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
