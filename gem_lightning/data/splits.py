"""Seeded, stratified, duplicate-aware train/val/test splits and the manifest that records them."""

# ``pooled`` (the student report's protocol): every usable image, whichever folder it came from, is split
# 70/15/15 per class. ``predefined``: the folder's own test split stays the test set and a stratified share
# of its train split becomes validation, so results compare with numbers published on the Kaggle split.
# Photos of extra sources (``data.extra_roots``) are split 70/15/15 per source and class in either mode, so
# each source's classes are in each split in proportion, and its test photos measure that source; or, with
# ``data.extra_roots_held_out=false``, all of them train (a few labelled photos a class of a user's source, whose
# other photos measure it), but for copies of a held-out photo, which go where that photo goes.
#
# Duplicate groups (gem_lightning.data.duplicates) are placed whole: in pooled mode a group never straddles
# two splits, so a copy of a test photo cannot sit in train. In predefined mode the folder's test split is
# given, so test images that duplicate a train image are marked as leaked instead, and evaluation reports
# accuracy with and without them. The same image under two classes is a label conflict: ``drop`` (default)
# excludes every copy, since at most one label can be right; ``keep`` keeps them, still in one split.
#
# The manifest is a CSV (path, class, split, sha256, duplicate_group, note) sorted by path with no timestamps,
# so the same files and seed always give the same bytes. Files that are not trained on are listed too: split
# ``skipped`` (unusable, with the reason) or ``excluded`` (a dropped label conflict).

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from gem_lightning.choices import checked_choice
from gem_lightning.data.duplicates import DuplicateGroup, DuplicateReport
from gem_lightning.data.scan import DatasetScan, ScannedFile
from gem_lightning.errors import GemLightningError
from gem_lightning.files.atomic_writes import write_text_atomically

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("path", "class", "split", "sha256", "duplicate_group", "note")


class SplitMode(str, Enum):
    """``data.split``: the one list of split modes (the config schema types the key with it)."""

    pooled = "pooled"  # 70/15/15 of all images per class
    predefined = "predefined"  # the folder's test/ stays the test set


class ConflictPolicy(str, Enum):
    """``data.label_conflicts``: what happens to the same image under two classes."""

    drop = "drop"  # every copy (at most one label is right)
    keep = "keep"


def _share(count: int, fraction: float) -> int:
    """Images of one class for a held-out split: rounded half up, at least one when the class allows it."""
    if fraction <= 0:
        return 0
    share = math.floor(count * fraction + 0.5)
    return max(share, 1) if count >= 3 else share


@dataclass
class SplitPlan:
    """Where every file goes. ``assignment`` maps each trained-on path to train/val/test."""

    assignment: dict[str, str]
    excluded: dict[str, str] = field(default_factory=dict)  # path -> why it is left out
    leaked: dict[str, tuple[str, ...]] = field(default_factory=dict)  # test path -> the train copies it matches
    group_of: dict[str, DuplicateGroup] = field(default_factory=dict)

    def note(self, item: ScannedFile) -> str:
        if item.skip_reason:
            return item.skip_reason
        if item.path in self.excluded:
            return self.excluded[item.path]
        if item.path in self.leaked:
            return "leak: duplicates train image(s) " + "; ".join(self.leaked[item.path])
        return ""


def _units_by_class(files: list[ScannedFile], group_of: dict[str, DuplicateGroup], seed: int) -> dict:
    """Per (source, class), the units a split places whole (a duplicate group, or one image), big groups first."""
    units: dict[tuple[str, str], dict[str, list[ScannedFile]]] = defaultdict(dict)
    for item in sorted(files, key=lambda f: f.path):
        group = group_of.get(item.path)
        key, stratum = (
            (group.id, (group.home_source, group.home_label)) if group else (item.path, (item.source, item.label))
        )
        units[stratum].setdefault(key, []).append(item)
    ordered = {}
    for (source, label), by_key in units.items():
        members = [by_key[key] for key in sorted(by_key)]
        # A string seed is hashed with SHA-512 by `random`, so the order is the same on every machine and
        # does not shift for one class when another class gains or loses images (nor when a source is added).
        random.Random(f"{seed}/{source}/{label}" if source else f"{seed}/{label}").shuffle(members)
        # Stable sort: big duplicate groups are placed first, while the held-out splits still have room.
        ordered[source, label] = sorted(members, key=len, reverse=True)
    return ordered


def _place(units: list[list[ScannedFile]], n_test: int, n_val: int, assignment: dict[str, str]) -> None:
    """Fill test, then val, up to their share; a unit that does not fit a held-out split goes to train."""
    filled = {"test": 0, "val": 0}
    for unit in units:
        split = "train"
        for name, share in (("test", n_test), ("val", n_val)):
            if filled[name] + len(unit) <= share:
                split = name
                break
        if split != "train":
            filled[split] += len(unit)
        for item in unit:
            assignment[item.path] = split


def plan_splits(
    scan: DatasetScan,
    mode: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    duplicates: DuplicateReport | None = None,
    conflict_policy: str = "drop",
    extra_roots_held_out: bool = True,
) -> SplitPlan:
    """Decide the split of every usable file, keeping duplicate groups whole; ``extra_roots_held_out=False``
    trains on every photo of the extra sources."""
    mode = checked_choice(mode, SplitMode, "data.split")
    conflict_policy = checked_choice(conflict_policy, ConflictPolicy, "data.label_conflicts")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise GemLightningError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must each be in [0, 1) "
            "and leave images for training"
        )
    group_of = duplicates.group_of() if duplicates else {}
    plan = SplitPlan(assignment={}, group_of=group_of)
    usable = []
    for item in scan.usable:
        group = group_of.get(item.path)
        if group is not None and group.is_conflict and conflict_policy == "drop":
            others = "; ".join(f"{m.path} ({m.label})" for m in group.members if m.path != item.path)
            plan.excluded[item.path] = f"label conflict ({group.kind} duplicate of {others}); data.label_conflicts=drop"
        else:
            usable.append(item)

    pool = usable
    if mode == "predefined":
        if scan.layout != "split_folders":
            raise GemLightningError(
                f"data.split=predefined needs {scan.root}/train and {scan.root}/test folders; "
                "this folder is flat, so use data.split=pooled"
            )

        def given_test(item: ScannedFile) -> bool:
            # The data root's test photos, and another source's copies of one, so that no copy trains.
            if not item.source:
                return item.origin == "test"
            group = group_of.get(item.path)
            return group is not None and any(not m.source and m.origin == "test" for m in group.members)

        kept = {item.path for item in usable}
        for item in usable:
            if given_test(item):
                plan.assignment[item.path] = "test"
                group = group_of.get(item.path)
                members = group.members if group else ()
                copies = tuple(m.path for m in members if not m.source and m.origin == "train" and m.path in kept)
                if copies:
                    plan.leaked[item.path] = copies
        pool = [item for item in usable if item.path not in plan.assignment]
    for (source, _), units in _units_by_class(pool, group_of, seed).items():
        size = sum(len(unit) for unit in units)
        if source and not extra_roots_held_out:
            test, val = 0.0, 0.0  # every photo trains
        else:  # the data root's own test split is given in predefined mode; other sources' photos are split here
            test, val = (0.0 if mode == "predefined" and not source else test_fraction), val_fraction
        _place(units, _share(size, test), _share(size, val), plan.assignment)
    return plan


def render_manifest(scan: DatasetScan, plan: SplitPlan) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for item in sorted(scan.files, key=lambda f: f.path):
        split = plan.assignment.get(item.path, "excluded" if item.path in plan.excluded else "skipped")
        group = plan.group_of.get(item.path)
        writer.writerow((item.path, item.label, split, item.sha256, group.id if group else "", plan.note(item)))
    return buffer.getvalue()


def manifest_path(
    cache_dir: Path,
    scan: DatasetScan,
    mode: str,
    seed: int,
    val: float,
    test: float,
    extra: str = "",
    extra_roots_held_out: bool = True,
) -> Path:
    """One manifest per data root (and extra sources) and split setting, named so a person can tell them apart.

    ``extra`` holds any other setting that changes the split (duplicate threshold, conflict policy)."""
    sources = "".join(f"|{folder}" for _, folder in scan.extra_roots)  # none: the key of a run without them
    sources += "|all trained" if scan.extra_roots and not extra_roots_held_out else ""
    key = hashlib.sha256(f"{scan.root}|{val}|{test}|{extra}{sources}".encode()).hexdigest()[:10]
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in scan.root.name) or "data"
    name += f"-and-{len(scan.extra_roots)}-more" if scan.extra_roots else ""
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
