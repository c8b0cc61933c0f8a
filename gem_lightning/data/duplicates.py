"""Group exact and near-duplicate images across a whole dataset, and find the same image under two labels."""

# Exact duplicates share a sha256. Near-duplicates are found with a small, documented colour fingerprint:
# the stored pixels shrunk to 24x24 RGB (Pillow's antialiased bilinear, aspect ignored), and two images
# count as the same photo when the mean absolute difference of their fingerprints, under the best of the
# 8 flips/quarter-turns, is below ``threshold`` on a 0-1 scale (0.01 by default). That is the measure the
# Kaggle set's SOURCE.md uses for its "16 near-duplicate test images", made orientation-blind because the
# set holds the same pixels under different EXIF orientation tags (e.g. Carnelian, Scapolite, Morganite):
# rotated copies of one photo are still one photo, and a model trained with rotation augmentation has seen
# them. A colour fingerprint rather than a grayscale perceptual hash (pHash, dHash) on purpose: gem classes
# differ mostly by colour, and a grayscale hash calls a yellow and a green stone shot the same way "equal".
#
# Comparing every pair is quadratic, so a cheap lower bound prunes first: the mean absolute difference of
# 6x6-pixel block means can only be smaller than the full one (triangle inequality), so pairs whose 4x4x3
# block means already differ by ``threshold`` or more are skipped without looking at the full fingerprints.
#
# Fingerprints are cached by sha256 in ``<cache>/fingerprints``, so a re-scan decodes nothing new.

from __future__ import annotations

import io
import logging
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gem_lightning.data.image_files import to_rgb
from gem_lightning.data.scan import DatasetScan, ScannedFile
from gem_lightning.files.atomic_writes import write_bytes_atomically
from gem_lightning.machine import auto_settings

log = logging.getLogger(__name__)

FINGERPRINT_SIDE = 24
BLOCK = 6  # 24 / 6 = 4x4 blocks per channel for the pruning bound
DEFAULT_THRESHOLD = 0.01


def fingerprint(path: Path) -> np.ndarray:
    """The 24x24x3 uint8 colour fingerprint of one image file's stored pixels (EXIF orientation ignored)."""
    with Image.open(path) as image:
        if image.format == "JPEG":
            # A reduced decode (still >= 8x the fingerprint) makes the first scan of 4,000 px photos cheap.
            image.draft("RGB", (8 * FINGERPRINT_SIDE, 8 * FINGERPRINT_SIDE))
        image.load()
        small = to_rgb(image).resize((FINGERPRINT_SIDE, FINGERPRINT_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.uint8)


def _dihedral(prints: np.ndarray) -> list[np.ndarray]:
    """The 8 flips and quarter-turns of a stack of (N, side, side, 3) fingerprints."""
    variants = []
    for quarter_turns in range(4):
        turned = np.rot90(prints, quarter_turns, axes=(1, 2))
        variants += [np.ascontiguousarray(turned), np.ascontiguousarray(turned[:, :, ::-1])]
    return variants


def _load_cache(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path) as stored:
            return dict(zip(stored["sha256"].tolist(), stored["fingerprints"], strict=True))
    except (OSError, ValueError, KeyError):
        log.warning("ignoring unreadable fingerprint cache %s; recomputing", path)
        return {}


def fingerprints(
    files: list[ScannedFile], locate: Callable[[ScannedFile], Path], cache_dir: Path
) -> dict[str, np.ndarray]:
    """sha256 -> fingerprint for every file (found on disk with ``locate``: ``DatasetScan.file``), computing
    only those not cached yet."""
    cache_path = Path(cache_dir) / "fingerprints" / f"rgb{FINGERPRINT_SIDE}.npz"
    known = _load_cache(cache_path)
    missing: dict[str, ScannedFile] = {}
    for item in files:
        if item.sha256 not in known:
            missing.setdefault(item.sha256, item)
    if missing:
        log.info("fingerprinting %d image(s) for duplicate detection", len(missing))
        with ThreadPoolExecutor(max_workers=auto_settings.thread_pool_size()) as pool:
            computed = pool.map(lambda item: fingerprint(locate(item)), missing.values())
            known.update(zip(missing, computed, strict=True))
        buffer = io.BytesIO()
        ordered = sorted(known)
        np.savez(buffer, sha256=np.array(ordered), fingerprints=np.stack([known[s] for s in ordered]))
        write_bytes_atomically(cache_path, buffer.getvalue())
    return {item.sha256: known[item.sha256] for item in files}


def near_pairs(prints: np.ndarray, threshold: float, chunk: int = 1024) -> dict[tuple[int, int], float]:
    """{(i, j): difference} for i < j whose orientation-blind mean absolute difference is below ``threshold``."""
    count = len(prints)
    pairs: dict[tuple[int, int], float] = {}
    if count < 2:
        return pairs

    def as_rows(stack: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        full = stack.astype(np.float32) / 255.0
        side = FINGERPRINT_SIDE // BLOCK
        coarse = full.reshape(len(stack), side, BLOCK, side, BLOCK, 3).mean(axis=(2, 4))
        return torch.from_numpy(full.reshape(len(stack), -1)), torch.from_numpy(coarse.reshape(len(stack), -1))

    query_full, query_coarse = as_rows(prints)
    for variant in _dihedral(prints):
        other_full, other_coarse = as_rows(variant)
        for start in range(0, count, chunk):
            bound = torch.cdist(query_coarse[start : start + chunk], other_coarse, p=1) / other_coarse.shape[1]
            rows, cols = torch.nonzero(bound < threshold, as_tuple=True)
            rows = rows + start
            keep = rows != cols
            rows, cols = rows[keep], cols[keep]
            if not len(rows):
                continue
            exact = (query_full[rows] - other_full[cols]).abs().mean(dim=1)
            for i, j, difference in zip(rows.tolist(), cols.tolist(), exact.tolist(), strict=True):
                if difference < threshold:
                    key = (min(i, j), max(i, j))
                    pairs[key] = min(difference, pairs.get(key, difference))
    return pairs


@dataclass(frozen=True)
class DuplicateGroup:
    """Files that show the same image. ``kind`` is ``exact`` when all share one sha256, else ``near``."""

    id: str
    kind: str
    members: tuple[ScannedFile, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(sorted({m.label for m in self.members}))

    @property
    def is_conflict(self) -> bool:
        """The same image filed under two or more classes: at most one label can be right."""
        return len(self.labels) > 1

    @property
    def home_label(self) -> str:
        """The class that most members carry (first by name on a tie): where a split counts the group."""
        counts = defaultdict(int)
        for member in self.members:
            counts[member.label] += 1
        return min(counts, key=lambda label: (-counts[label], label))

    @property
    def home_source(self) -> str:
        """The data root ("") when a member comes from it, else the first extra source by name: the source
        whose split shares the group counts against."""
        return min(member.source for member in self.members)


@dataclass(frozen=True)
class DuplicateReport:
    groups: tuple[DuplicateGroup, ...]
    threshold: float | None

    def group_of(self) -> dict[str, DuplicateGroup]:
        return {member.path: group for group in self.groups for member in group.members}

    @property
    def conflicts(self) -> tuple[DuplicateGroup, ...]:
        return tuple(group for group in self.groups if group.is_conflict)


def find_duplicate_groups(
    scan: DatasetScan, cache_dir: Path, threshold: float | None = DEFAULT_THRESHOLD
) -> DuplicateReport:
    """Group the scan's usable files by sha256 and, unless ``threshold`` is None, by fingerprint distance."""
    files = sorted(scan.usable, key=lambda f: f.path)
    parent = list(range(len(files)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    first_with_hash: dict[str, int] = {}
    for index, item in enumerate(files):
        union(first_with_hash.setdefault(item.sha256, index), index)
    if threshold is not None and files:
        by_hash = fingerprints(files, scan.file, cache_dir)
        distinct = sorted(first_with_hash)
        prints = np.stack([by_hash[digest] for digest in distinct])
        for i, j in near_pairs(prints, threshold):
            union(first_with_hash[distinct[i]], first_with_hash[distinct[j]])

    members: dict[int, list[ScannedFile]] = defaultdict(list)
    for index, item in enumerate(files):
        members[find(index)].append(item)
    groups = []
    for number, root_index in enumerate(sorted(r for r, m in members.items() if len(m) > 1), start=1):
        group_members = tuple(members[root_index])
        kind = "exact" if len({m.sha256 for m in group_members}) == 1 else "near"
        groups.append(DuplicateGroup(f"dup{number:04d}", kind, group_members))
    return DuplicateReport(tuple(groups), threshold)
