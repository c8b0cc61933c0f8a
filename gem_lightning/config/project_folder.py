"""The project folder: the one holding conf/, train.py and this package (a clone, installed editable).

Kept apart from the schemas, which import the data module and the classifier, so that what needs only the
folder (the sweep launchers' ``PYTHONPATH``) finds it without importing those.
"""

from __future__ import annotations

from pathlib import Path

# Not the working directory: Hydra resolves the multirun folder before it knows that (`${hydra:runtime.cwd}` fails
# there), and a run started from another folder must still find data/, cache/ and outputs/.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
