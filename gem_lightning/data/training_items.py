"""Which file each image of a split is decoded from: the photo itself, or its cut-out from the background cache.

``training_items`` cuts backgrounds out when ``background`` says so (cached by content, see
``prepared_images``) and returns one ``TrainingItem`` per usable image, with the background-removal part of
the data report (None for original photos).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gem_lightning.data.background.cut_out_job import SourceImage
from gem_lightning.data.background.cut_outs import BackgroundRemoval
from gem_lightning.data.scan import DatasetScan
from gem_lightning.data.splits import SplitPlan


@dataclass(frozen=True)
class TrainingItem:
    """One image as the data module serves it."""

    source: str  # the photo's path in the manifest (relative to the data root; an extra source's starts with its name)
    photo: Path  # the photo itself
    from_source: str  # the source it came from: the data root's folder name, or an extra source's name
    label: str
    split: str
    image_file: Path  # what is decoded: the prepared cut-out, or the original photo
    leaked: bool  # a test image that duplicates a train image


def training_items(
    scan: DatasetScan, plan: SplitPlan, background: BackgroundRemoval | None, cache_dir: Path
) -> tuple[list[TrainingItem], dict | None]:
    """Which file each split image is decoded from, and the background-removal part of the report."""
    chosen = [item for item in scan.usable if item.path in plan.assignment]
    photos = {item.path: scan.file(item) for item in chosen}  # the originals on disk
    if background is None:
        files = photos
        background_report = None
    else:
        sources = [SourceImage(item.sha256, photos[item.path]) for item in chosen]
        records, summary = background.prepare(sources, cache_dir, skipped=len(scan.skipped))
        variant = background.variant_dir(cache_dir)
        files, fallbacks = {}, []
        for item in chosen:
            record = records.get(item.sha256)
            if record is not None and record["file"] is not None:
                files[item.path] = variant / record["file"]
            if record is not None and record["flag"]:
                fallbacks.append({"path": item.path, "reason": record["flag"], "action": record["method"]})
        background_report = {
            "method": background.backend.describe(),
            "settings": background.settings(),
            "cache": str(variant),
            "summary": summary.as_dict(),
            "fallbacks": fallbacks,
            "not_used": sorted(item.path for item in chosen if item.path not in files),
        }
    items = [
        TrainingItem(
            source=item.path,
            photo=photos[item.path],
            from_source=scan.source_of(item),
            label=item.label,
            split=plan.assignment[item.path],
            image_file=files[item.path],
            leaked=item.path in plan.leaked,
        )
        for item in chosen
        if item.path in files
    ]
    return items, background_report
