"""Seeded, stratified train/val/test splits and the manifest that records them.

``pooled`` (the student report's protocol): every usable image, whichever folder it came from, is split
70/15/15 per class. ``predefined``: the folder's own test split stays the test set and a stratified share
of its train split becomes validation, so results compare with numbers published on the Kaggle split.

The manifest is a CSV (path, class, split, sha256, note) sorted by path with no timestamps, so the same
files and seed always give the same bytes; skipped files are listed with split ``skipped`` and the reason.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import random
from collections import defaultdict
from pathlib import Path

from gem_lightning.atomic_files import write_text_atomically
from gem_lightning.dataset_scan import DatasetScan, ScannedFile
from gem_lightning.errors import GemLightningError

log = logging.getLogger(__name__)

SPLIT_MODES = ("pooled", "predefined")
MANIFEST_COLUMNS = ("path", "class", "split", "sha256", "note")


def _share(count: int, fraction: float) -> int:
    """Images of one class for a held-out split: rounded half up, at least one when the class allows it."""
    if fraction <= 0:
        return 0
    share = math.floor(count * fraction + 0.5)
    return max(share, 1) if count >= 3 else share


def _shuffled_by_class(files: list[ScannedFile], seed: int) -> dict[str, list[ScannedFile]]:
    by_class: dict[str, list[ScannedFile]] = defaultdict(list)
    for item in sorted(files, key=lambda f: f.path):
        by_class[item.label].append(item)
    for label, members in by_class.items():
        # A string seed is hashed with SHA-512 by `random`, so the order is the same on every machine and
        # does not shift for one class when another class gains or loses images.
        random.Random(f"{seed}/{label}").shuffle(members)
    return by_class


def assign_splits(scan: DatasetScan, mode: str, seed: int, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Map each usable file's path to ``train``, ``val`` or ``test``."""
    if mode not in SPLIT_MODES:
        raise GemLightningError(f"data.split={mode!r} is not a split mode; use one of {', '.join(SPLIT_MODES)}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise GemLightningError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must each be in [0, 1) "
            "and leave images for training"
        )
    usable = scan.usable
    assignment: dict[str, str] = {}
    if mode == "predefined":
        if scan.layout != "split_folders":
            raise GemLightningError(
                f"data.split=predefined needs {scan.root}/train and {scan.root}/test folders; "
                "this folder is flat, so use data.split=pooled"
            )
        for item in usable:
            if item.origin == "test":
                assignment[item.path] = "test"
        pool = [item for item in usable if item.origin == "train"]
        test_fraction = 0.0
    else:
        pool = usable
    for members in _shuffled_by_class(pool, seed).values():
        n_test = _share(len(members), test_fraction)
        n_val = _share(len(members), val_fraction)
        for index, item in enumerate(members):
            assignment[item.path] = "test" if index < n_test else "val" if index < n_test + n_val else "train"
    return assignment


def render_manifest(scan: DatasetScan, assignment: dict[str, str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for item in sorted(scan.files, key=lambda f: f.path):
        split = assignment.get(item.path, "skipped")
        writer.writerow((item.path, item.label, split, item.sha256, item.skip_reason))
    return buffer.getvalue()


def manifest_path(cache_dir: Path, scan: DatasetScan, mode: str, seed: int, val: float, test: float) -> Path:
    """One manifest per data root and split setting, named so a person can tell them apart."""
    key = hashlib.sha256(f"{scan.root}|{val}|{test}".encode()).hexdigest()[:10]
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in scan.root.name) or "data"
    return Path(cache_dir) / "manifests" / f"{name}-{mode}-seed{seed}-{key}.csv"


def write_manifest(path: Path, text: str) -> bool:
    """Write the manifest; returns True when it was new or changed (and says which rows changed)."""
    path = Path(path)
    if path.is_file():
        previous = path.read_text(encoding="utf-8")
        if previous == text:
            return False
        old_rows, new_rows = set(previous.splitlines()[1:]), set(text.splitlines()[1:])
        log.warning(
            "the data folder changed since %s was written (%d row(s) gone, %d new): the split is rebuilt, "
            "so metrics are not comparable with earlier runs on this manifest",
            path,
            len(old_rows - new_rows),
            len(new_rows - old_rows),
        )
    write_text_atomically(path, text)
    return True


def read_manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
