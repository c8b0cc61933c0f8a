"""Find the classes and images under a data root (and any extra sources), and check every file once."""

# Two layouts are accepted:
#
# * Kaggle's ``root/train/<class>/`` + ``root/test/<class>/`` ("split folders"), and
# * a flat ``root/<class>/``.
#
# ``data.extra_roots`` adds class folders from other sources (a shop's photos, a phone's): each is scanned as a
# root of its own (its own scan cache), then merged. Their files' paths start with the source's name
# (``<folder name>/<class>/x.jpg``), so every path in a manifest stays unique and says where it came from.
#
# Every file inside a class folder is decoded once. Files that cannot be used are skipped with a reason,
# never deleted. Results are cached by (size, mtime) so a second scan of an unchanged folder only stats files.

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path

from gem_lightning.data.image_files import UnusableImage, has_image_extension, inspect_image
from gem_lightning.errors import GemLightningError
from gem_lightning.files.atomic_writes import write_text_atomically
from gem_lightning.files.hashing import file_sha256
from gem_lightning.machine import auto_settings

log = logging.getLogger(__name__)

SPLIT_FOLDERS = ("train", "test")
SCAN_CACHE_VERSION = 1


@dataclass(frozen=True)
class ScannedFile:
    """One file inside a class folder, usable or not.

    ``origin`` is the split folder it came from (``train``/``test``) or ``""`` in the flat layout;
    ``skip_reason`` is empty for usable images.
    """

    path: str  # relative to the data root, "/"-separated; an extra source's starts with its name
    label: str
    origin: str
    sha256: str
    width: int
    height: int
    skip_reason: str = ""
    source: str = ""  # the extra source it came from (a name of DatasetScan.extra_roots); "" for the data root

    @property
    def usable(self) -> bool:
        return not self.skip_reason


@dataclass(frozen=True)
class DatasetScan:
    root: Path
    layout: str  # of the data root: "split_folders" or "flat"
    class_names: tuple[str, ...]
    files: tuple[ScannedFile, ...]
    extra_roots: tuple[tuple[str, Path], ...] = ()  # (source name, folder) of each extra source

    @cached_property
    def source_folders(self) -> dict[str, Path]:
        """Each source's name and folder: the data root's (named by its folder), then each extra source's."""
        return {self.root.name: self.root, **dict(self.extra_roots)}

    @property
    def sources(self) -> tuple[str, ...]:
        """The data root's name, then each extra source's."""
        return tuple(self.source_folders)

    def source_of(self, item: ScannedFile) -> str:
        """The name of the source ``item`` came from (one of ``sources``)."""
        return item.source or self.root.name

    def file(self, item: ScannedFile) -> Path:
        """Where ``item`` is on disk."""
        if not item.source:
            return self.root / item.path
        return self.source_folders[item.source] / item.path.removeprefix(f"{item.source}/")

    def _with(self, class_names: tuple[str, ...]) -> DatasetScan:
        files = tuple(f for f in self.files if f.label in class_names)
        return DatasetScan(self.root, self.layout, class_names, files, self.extra_roots)

    @property
    def usable(self) -> list[ScannedFile]:
        return [f for f in self.files if f.usable]

    @property
    def skipped(self) -> list[ScannedFile]:
        return [f for f in self.files if not f.usable]

    def log_skipped(self) -> None:
        """One warning line listing every skipped file and why (the manifest lists them too)."""
        if self.skipped:
            listing = "; ".join(f"{f.path} ({f.skip_reason})" for f in self.skipped)
            log.warning("skipped %d unusable file(s) under %s: %s", len(self.skipped), self.root, listing)

    def classes_with_images(self, min_images: int = 1, needed_per_class: int = 3) -> DatasetScan:
        """The scan without classes of fewer than ``min_images`` usable images (an empty folder is no class).

        Each dropped class is named in one warning; classes left with fewer images than the split gives
        every class (``needed_per_class``: one each for train, validation and test) are named in another.
        Fewer than two classes left cannot train a classifier: one GemLightningError says so.
        """
        counts = Counter(f.label for f in self.usable)
        floor = max(1, min_images)
        dropped = [name for name in self.class_names if counts[name] < floor]
        kept = tuple(name for name in self.class_names if counts[name] >= floor)
        if dropped:
            listing = ", ".join(f"{name} ({counts[name]})" for name in dropped)
            wanted = "no usable image" if floor == 1 else f"fewer than {floor} usable images"
            log.warning("left out %d class folder(s) with %s under %s: %s", len(dropped), wanted, self.root, listing)
        if len(kept) < 2:
            raise GemLightningError(
                f"need at least 2 class folders with images under {self.root}, found {len(kept)}"
                f"{': ' + ', '.join(kept) if kept else ''}. Put one folder of photos per class there."
            )
        few = [name for name in kept if counts[name] < needed_per_class]
        if few:
            listing = ", ".join(f"{name} ({counts[name]})" for name in few)
            log.warning(
                "%d class(es) have too few images for one in each of train, validation and test: %s. They "
                "will miss from some split; data.min_images_per_class=%d leaves them out",
                len(few),
                listing,
                needed_per_class,
            )
        return self._with(kept)

    def first_classes(self, count: int) -> DatasetScan:
        """The same scan restricted to the first ``count`` classes in sorted order (for quick runs)."""
        return self._with(self.class_names[:count])


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def detect_layout(root: Path) -> str:
    """``split_folders`` when root holds train/ and test/ folders, else ``flat``."""
    if not root.is_dir():
        raise GemLightningError(
            f"data folder not found: {root}. Put one folder per class there (or Kaggle's train/ and test/ "
            "folders), or point data.root at your data."
        )
    if all((root / name).is_dir() for name in SPLIT_FOLDERS):
        return "split_folders"
    return "flat"


def discover_classes(root: Path) -> tuple[str, tuple[str, ...]]:
    """Return (layout, sorted class names). Class names are folder names and may contain spaces."""
    root = Path(root)
    layout = detect_layout(root)
    parents = [root / name for name in SPLIT_FOLDERS] if layout == "split_folders" else [root]
    names = sorted({d.name for parent in parents for d in _visible_dirs(parent)})
    if len(names) < 2:
        found = f"found only {names[0]!r}" if names else "found none"
        raise GemLightningError(
            f"need at least 2 class folders in {root} ({found}): expected {root}/<class>/<image> or "
            f"{root}/train/<class>/<image>"
        )
    return layout, tuple(names)


def _candidate_files(root: Path, layout: str) -> list[tuple[str, str, str]]:
    """(relative path, class, origin) of every non-hidden image file inside a class folder, sorted by path."""
    origins = SPLIT_FOLDERS if layout == "split_folders" else ("",)
    found = []
    for origin in origins:
        parent = root / origin if origin else root
        for class_dir in _visible_dirs(parent):
            for dirpath, dirnames, filenames in os.walk(class_dir):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in filenames:
                    if name.startswith(".") or not has_image_extension(Path(name)):
                        continue  # hidden, or not a photo at all (notes.txt): not listed as skipped
                    relative = (Path(dirpath) / name).relative_to(root).as_posix()
                    found.append((relative, class_dir.name, origin))
    return sorted(found)


def _inspect(root: Path, relative: str, label: str, origin: str, max_pixels: int) -> ScannedFile:
    path = root / relative
    try:
        digest = file_sha256(path)
    except OSError as error:
        return ScannedFile(relative, label, origin, "", 0, 0, f"cannot read: {error}")
    try:
        width, height = inspect_image(path, max_pixels)
    except UnusableImage as problem:
        return ScannedFile(relative, label, origin, digest, 0, 0, str(problem))
    return ScannedFile(relative, label, origin, digest, width, height)


def scan_dataset(root: Path, cache_dir: Path, max_pixels: int, workers: int | None = None) -> DatasetScan:
    """Scan ``root``; unchanged files (same size and mtime) are taken from the cache in ``cache_dir``."""
    root = Path(root).resolve()
    layout, class_names = discover_classes(root)
    # One cache file per data root and pixel limit: the limit changes which files count as usable.
    key = hashlib.sha256(f"{root}|{max_pixels}".encode()).hexdigest()[:16]
    cache_path = Path(cache_dir) / "scans" / f"{key}.json"
    cached: dict[str, dict] = {}
    if cache_path.is_file():
        try:
            stored = json.loads(cache_path.read_text())
            if stored.get("version") == SCAN_CACHE_VERSION:
                cached = stored["files"]
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring unreadable scan cache %s; rescanning", cache_path)

    candidates = _candidate_files(root, layout)
    stats = {rel: (root / rel).stat() for rel, _, _ in candidates}
    results: dict[str, ScannedFile] = {}
    to_inspect = []
    for relative, label, origin in candidates:
        entry = cached.get(relative)
        stat = stats[relative]
        if entry and entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns:
            results[relative] = ScannedFile(**entry["file"])
        else:
            to_inspect.append((relative, label, origin))

    if to_inspect:
        log.info("checking %d of %d files under %s", len(to_inspect), len(candidates), root)
        # Pillow's decoders and hashlib release the GIL, so threads use every core without pickling.
        with ThreadPoolExecutor(max_workers=workers or auto_settings.thread_pool_size()) as pool:
            inspected = pool.map(lambda c: _inspect(root, *c, max_pixels), to_inspect)
            for item in inspected:
                results[item.path] = item
        entries = {
            rel: {"size": stats[rel].st_size, "mtime_ns": stats[rel].st_mtime_ns, "file": asdict(results[rel])}
            for rel in sorted(results)
        }
        write_text_atomically(
            cache_path, json.dumps({"version": SCAN_CACHE_VERSION, "root": str(root), "files": entries})
        )

    files = tuple(results[rel] for rel, _, _ in candidates)
    return DatasetScan(root=root, layout=layout, class_names=class_names, files=files)


def scan_sources(
    root: Path, extra_roots: list[Path], cache_dir: Path, max_pixels: int, workers: int | None = None
) -> DatasetScan:
    """``scan_dataset`` of ``root`` merged with the scans of ``extra_roots``: the union of their classes, each
    extra file's path prefixed with its source's name (its folder's name). Two sources of one name, or a source
    named like a folder of the data root, stop with one error naming both."""
    scan = scan_dataset(root, cache_dir, max_pixels, workers)
    if not extra_roots:
        return scan
    taken = {path.name: path for path in scan.root.iterdir()}
    sources, files, names = [], list(scan.files), set(scan.class_names)
    for extra in extra_roots:
        other = scan_dataset(extra, cache_dir, max_pixels, workers)
        name = other.root.name
        if name in taken or other.root == scan.root:
            raise GemLightningError(
                f"data.extra_roots: {other.root} is named like {taken.get(name, scan.root)}; its photos' "
                "paths would be mistaken for those, so give the folder another name (or a link of another name)"
            )
        taken[name] = other.root
        sources.append((name, other.root))
        names.update(other.class_names)
        files += [replace(item, path=f"{name}/{item.path}", source=name) for item in other.files]
    return DatasetScan(scan.root, scan.layout, tuple(sorted(names)), tuple(files), tuple(sources))
