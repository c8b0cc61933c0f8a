"""Everything before training, as one step: scan, duplicate groups, split and manifest, cut-outs, image arrays,
the data report; then one dataset per split over the prepared rows. Nothing under the data root is written
to; every output is cached under ``cache_dir``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gem_lightning.data.background.cut_outs import BackgroundRemoval
from gem_lightning.data.background.swap import BackgroundSwap
from gem_lightning.data.duplicates import find_duplicate_groups
from gem_lightning.data.image_arrays import build_image_array
from gem_lightning.data.image_dataset import GemImageDataset
from gem_lightning.data.report import build_report, contact_sheet_samples, write_report
from gem_lightning.data.scan import DatasetScan, scan_sources
from gem_lightning.data.splits import SplitPlan, manifest_path, plan_splits, render_manifest, write_manifest
from gem_lightning.data.training_items import TrainingItem, training_items

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitSettings:
    """The ``data.*`` keys that decide which images there are and where each goes."""

    mode: str
    seed: int
    val_fraction: float
    test_fraction: float
    near_duplicate_threshold: float | None
    label_conflicts: str
    max_classes: int | None
    min_images_per_class: int
    extra_roots_held_out: bool  # false: every photo of data.extra_roots trains


@dataclass(frozen=True)
class PreparedFolder:
    scan: DatasetScan
    plan: SplitPlan
    items: list[TrainingItem]  # every split image, row i of each image array
    report: dict
    manifest_file: Path
    report_file: Path
    image_arrays: list[Path]  # one per side asked for, in that order
    split: SplitSettings
    source: str  # the background removal the images went through, or "original photos"

    def summary(self) -> str:
        """One line: classes, images per split, leaked test images, how it was split, where it is written."""
        counts = {name: len(rows) for name, rows in rows_by_split(self.items).items()}
        leaked = sum(item.leaked for item in self.items if item.split == "test")
        return (
            f"{len(self.scan.class_names)} classes; train {counts['train']}, val {counts['val']}, test "
            f"{counts['test']} images ({leaked} test image(s) marked leaked; split={self.split.mode}, seed "
            f"{self.split.seed}, {self.source}); manifest {self.manifest_file}; report {self.report_file}"
        )


def prepare_folder(
    root: Path,
    extra_roots: list[Path],
    cache_dir: Path,
    split: SplitSettings,
    *,
    max_image_pixels: int,
    background: BackgroundRemoval | None,
    array_sides: tuple[int, ...],
    num_workers: int,
) -> PreparedFolder:
    """Scan ``root`` and ``extra_roots`` (``scan.scan_sources``), split them as ``split`` says, write the
    manifest, cut out backgrounds (``background``), decode every image once at each of ``array_sides`` and write
    the data report."""
    scan = scan_sources(root, extra_roots, cache_dir, max_image_pixels)
    manifest_file = manifest_path(
        cache_dir,
        scan,
        split.mode,
        split.seed,
        split.val_fraction,
        split.test_fraction,
        extra=f"{split.near_duplicate_threshold}|{split.label_conflicts}",
        extra_roots_held_out=split.extra_roots_held_out,
    )
    if split.max_classes is not None:
        scan = scan.first_classes(split.max_classes)
        # Its own manifest, so switching between the subset and the whole set is not a "changed folder".
        manifest_file = manifest_file.with_name(f"{manifest_file.stem}-first{split.max_classes}.csv")
    scan = scan.classes_with_images(split.min_images_per_class, needed_per_class=2 if split.mode == "predefined" else 3)
    if split.min_images_per_class > 1:
        manifest_file = manifest_file.with_name(f"{manifest_file.stem}-min{split.min_images_per_class}.csv")
    duplicates = find_duplicate_groups(scan, cache_dir, split.near_duplicate_threshold)
    plan = plan_splits(
        scan,
        split.mode,
        split.seed,
        split.val_fraction,
        split.test_fraction,
        duplicates=duplicates,
        conflict_policy=split.label_conflicts,
        extra_roots_held_out=split.extra_roots_held_out,
    )
    write_manifest(manifest_file, render_manifest(scan, plan))
    items, background_report = training_items(scan, plan, background, cache_dir)
    files = [item.image_file for item in items]
    arrays = [build_image_array(files, side, cache_dir, num_workers) for side in array_sides]

    settings = {
        "mode": split.mode,
        "seed": split.seed,
        "val_fraction": split.val_fraction,
        "test_fraction": split.test_fraction,
        "label_conflicts": split.label_conflicts,
        "extra_roots_held_out": split.extra_roots_held_out,
        "manifest": str(manifest_file),
    }
    report = build_report(scan, plan, duplicates, items, settings, background_report)
    variant = Path(background_report["cache"]).name if background_report else "original"
    report_file = write_report(
        report,
        cache_dir / "reports" / f"{manifest_file.stem}-{variant}",
        contact_sheet_samples(items, scan.class_names),
        f"{' + '.join(scan.sources)}: {background_report['method'] if background_report else 'original photos'}",
    )
    if background_report and background_report["not_used"]:
        log.warning(
            "%d image(s) have no prepared version (dropped by background.fallback=drop or failed) and are left "
            "out; see %s",
            len(background_report["not_used"]),
            report_file,
        )
    source = background.backend.describe() if background is not None else "original photos"
    return PreparedFolder(scan, plan, items, report, manifest_file, report_file, arrays, split, source)


def rows_by_split(items: list[TrainingItem]) -> dict[str, list[tuple[int, TrainingItem]]]:
    """(row in the image arrays, item) of each split, in the arrays' order."""
    by_split: dict[str, list[tuple[int, TrainingItem]]] = {"train": [], "val": [], "test": []}
    for row, item in enumerate(items):
        by_split[item.split].append((row, item))
    return by_split


def split_datasets(
    by_split: dict[str, list[tuple[int, TrainingItem]]],
    class_names: tuple[str, ...],
    evaluation: tuple[int, Path | None],
    training: tuple[int, Path | None, Callable | None] | None,
    masks: tuple[Path, BackgroundSwap] | None,
) -> dict[str, GemImageDataset]:
    """One dataset per split over the prepared rows: validation and test read the ``evaluation`` (side, array)
    squares; training reads the ``training`` (side, array, transform) ones when augmenting, with ``masks``
    (mask array, swap) when backgrounds are swapped."""
    index_of = {name: i for i, name in enumerate(class_names)}
    datasets = {}
    for name, chosen in by_split.items():
        side, array, transform = (*evaluation, None) if name != "train" or training is None else training
        mask_array, swap = masks if name == "train" and masks is not None else (None, None)
        datasets[name] = GemImageDataset(
            [(item.image_file, index_of[item.label]) for _, item in chosen],
            transform,
            side,
            leaked=[item.leaked for _, item in chosen] if name == "test" else None,
            array=array,
            rows=[row for row, _ in chosen],
            masks=mask_array,
            background_swap=swap,
        )
    return datasets
