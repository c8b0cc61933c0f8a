"""The LightningDataModule: prepares a gemstone folder and serves augmented uint8 batches.

Preparation (``prepare_data``): scan every file once, group exact and near-duplicates, split so that no
duplicate group straddles two splits, cut backgrounds out if ``background`` says so (cached by content),
and write the split manifest and the data report. Nothing under the data root is ever written to.

Batches stay uint8 (N, 3, H, W) all the way to the model, which converts and normalises them itself with
its backbone's mean and std: a quarter of the bytes to copy to a GPU, and normalisation that can never
disagree with the backbone because the checkpoint carries it.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from gem_lightning.data_report import REPORT_NAME, TrainingItem, build_report, write_report
from gem_lightning.dataset_scan import DatasetScan, discover_classes, scan_dataset
from gem_lightning.demo_data import DemoGemSet
from gem_lightning.duplicate_groups import DEFAULT_THRESHOLD, find_duplicate_groups
from gem_lightning.errors import GemLightningError
from gem_lightning.image_files import load_rgb
from gem_lightning.prepared_images import BackgroundRemoval, SourceImage
from gem_lightning.splits import SplitPlan, manifest_path, plan_splits, render_manifest, write_manifest

log = logging.getLogger(__name__)


def eval_transform(image_size: int) -> v2.Transform:
    """Shorter side to ``image_size``, then the centre square: what validation, test and prediction see."""
    return v2.Compose([v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])


class GemImageDataset(Dataset):
    """(uint8 CHW tensor, class index) pairs, or (tensor, index, leaked) when ``leaked`` flags are given:
    the test set carries them so evaluation can also report accuracy without leaked duplicates."""

    def __init__(
        self,
        files: list[tuple[Path, int]],
        transform: Callable,
        decode_min_side: int,
        leaked: list[bool] | None = None,
    ):
        self.items = files
        self.transform = transform
        self.decode_min_side = decode_min_side
        self.leaked = leaked

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple:
        path, label = self.items[index]
        image = self.transform(v2.functional.pil_to_tensor(load_rgb(path, min_side=self.decode_min_side)))
        if self.leaked is None:
            return image, label
        return image, label, self.leaked[index]


def evaluation_dataset(
    files: list[tuple[Path, int]], image_size: int, leaked: list[bool] | None = None
) -> GemImageDataset:
    """What validation, test, prediction, export checks and reports read: the one evaluation path.

    Each file is decoded at reduced scale but never below twice ``image_size`` (room that training crops
    need too), then ``eval_transform``.
    """
    return GemImageDataset(files, eval_transform(image_size), 2 * image_size, leaked)


def _resolve_num_workers(num_workers: int | str) -> int:
    if num_workers == "auto":
        # Leave no core idle but do not spawn more decoders than a laptop-sized batch needs. The cores this
        # process may use (a sweep worker of --jobs K gets its share), not all the machine's.
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return min(8, usable or 1)
    if isinstance(num_workers, int) and num_workers >= 0:
        return num_workers
    raise GemLightningError(f"data.num_workers={num_workers!r}: use a whole number >= 0 or 'auto'")


def _contact_sheet_samples(items: list[TrainingItem], class_names: tuple[str, ...], per_class: int = 4) -> dict:
    """The first few images of each class (train split first), as the model will see them."""
    order = {"train": 0, "val": 1, "test": 2}
    samples: dict[str, list[Path]] = {name: [] for name in class_names}
    for item in sorted(items, key=lambda i: (order[i.split], i.source)):
        if len(samples[item.label]) < per_class:
            samples[item.label].append(item.image_file)
    return samples


class GemDataModule(pl.LightningDataModule):
    def __init__(
        self,
        root: str,
        cache_dir: str,
        split: str = "pooled",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 42,
        image_size: int = 224,
        batch_size: int = 48,
        num_workers: int | str = "auto",
        pin_memory: bool | str = "auto",
        max_image_pixels: int = 50_000_000,
        train_transform: Callable | None = None,
        augment_policy: str = "none",
        demo: DemoGemSet | None = None,
        max_classes: int | None = None,
        background: BackgroundRemoval | None = None,
        near_duplicate_threshold: float | None = DEFAULT_THRESHOLD,
        label_conflicts: str = "drop",
    ):
        super().__init__()
        if image_size < 16:
            raise GemLightningError(f"data.image_size={image_size} is too small; use 16 or more")
        if batch_size < 1:
            raise GemLightningError(f"data.batch_size={batch_size} must be at least 1")
        self.root = Path(root)
        self.cache_dir = Path(cache_dir)
        self.split = getattr(split, "value", split)  # a config enum becomes its plain name
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = _resolve_num_workers(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory)
        self.max_image_pixels = max_image_pixels
        self.train_transform = train_transform or eval_transform(image_size)
        self.augment_policy = augment_policy
        self.demo = demo
        self.max_classes = max_classes
        self.background = background if background is not None and background.enabled else None
        self.near_duplicate_threshold = near_duplicate_threshold
        self.label_conflicts = getattr(label_conflicts, "value", label_conflicts)
        self.scan: DatasetScan | None = None
        self.plan: SplitPlan | None = None  # where every file goes, fixed for this module's life
        self.items: list[TrainingItem] | None = None
        self.report: dict | None = None
        self.manifest_file: Path | None = None
        self.report_file: Path | None = None
        self.datasets: dict[str, GemImageDataset] = {}

    # -- preparation -------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Render the demo set if asked; scan, split, cut out backgrounds, write manifest and report."""
        if self.demo is not None:
            self.demo.render(self.root)
        self._prepare()

    def check(self) -> None:
        """Fail now, before any work, if something preparation needs is missing (data folder, model file)."""
        if self.demo is None:
            discover_classes(self.root)
        if self.background is not None:
            self.background.check()

    def _prepare(self) -> list[TrainingItem]:
        """Everything before training, once per data module.

        train() and Lightning's fit and test each call prepare_data/setup; reusing the first result skips
        repeated scans and guarantees that testing sees the split that training saw. Under DDP every rank
        runs this; the per-variant lock in the background cache makes all but one find the work done.
        """
        if self.items is not None:
            return self.items
        self.check()
        scan = scan_dataset(self.root, self.cache_dir, self.max_image_pixels)
        manifest_file = manifest_path(
            self.cache_dir,
            scan,
            self.split,
            self.split_seed,
            self.val_fraction,
            self.test_fraction,
            extra=f"{self.near_duplicate_threshold}|{self.label_conflicts}",
        )
        if self.max_classes is not None:
            scan = scan.first_classes(self.max_classes)
            # Its own manifest, so switching between the subset and the whole set is not a "changed folder".
            manifest_file = manifest_file.with_name(f"{manifest_file.stem}-first{self.max_classes}.csv")
        duplicates = find_duplicate_groups(scan, self.cache_dir, self.near_duplicate_threshold)
        plan = plan_splits(
            scan,
            self.split,
            self.split_seed,
            self.val_fraction,
            self.test_fraction,
            duplicates=duplicates,
            conflict_policy=self.label_conflicts,
        )
        write_manifest(manifest_file, render_manifest(scan, plan))
        items, background_report = self._image_files(scan, plan)

        settings = {
            "mode": self.split,
            "seed": self.split_seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "label_conflicts": self.label_conflicts,
            "manifest": str(manifest_file),
        }
        report = build_report(scan, plan, duplicates, items, settings, background_report)
        variant = Path(background_report["cache"]).name if background_report else "original"
        self.report_file = write_report(
            report,
            self.cache_dir / "reports" / f"{manifest_file.stem}-{variant}",
            _contact_sheet_samples(items, scan.class_names),
            f"{scan.root.name}: {background_report['method'] if background_report else 'original photos'}",
        )
        self.scan, self.plan, self.items, self.report, self.manifest_file = scan, plan, items, report, manifest_file
        return items

    def _image_files(self, scan: DatasetScan, plan: SplitPlan) -> tuple[list[TrainingItem], dict | None]:
        """Which file each split image is decoded from, and the background-removal part of the report."""
        chosen = [item for item in scan.usable if item.path in plan.assignment]
        if self.background is None:
            files = {item.path: scan.root / item.path for item in chosen}
            background_report = None
        else:
            sources = [SourceImage(item.sha256, scan.root / item.path) for item in chosen]
            records, summary = self.background.prepare(sources, self.cache_dir, skipped=len(scan.skipped))
            variant = self.background.variant_dir(self.cache_dir)
            files, fallbacks = {}, []
            for item in chosen:
                record = records.get(item.sha256)
                if record is not None and record["file"] is not None:
                    files[item.path] = variant / record["file"]
                if record is not None and record["flag"]:
                    fallbacks.append({"path": item.path, "reason": record["flag"], "action": record["method"]})
            background_report = {
                "method": self.background.backend.describe(),
                "settings": self.background.settings(),
                "cache": str(variant),
                "summary": summary.as_dict(),
                "fallbacks": fallbacks,
                "not_used": sorted(item.path for item in chosen if item.path not in files),
            }
            if background_report["not_used"]:
                log.warning(
                    "%d image(s) have no prepared version (dropped by background.fallback=drop or failed) and "
                    "are left out; see %s",
                    len(background_report["not_used"]),
                    REPORT_NAME,
                )
        items = [
            TrainingItem(
                source=item.path,
                label=item.label,
                split=plan.assignment[item.path],
                image_file=files[item.path],
                leaked=item.path in plan.leaked,
            )
            for item in chosen
            if item.path in files
        ]
        return items, background_report

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        items = self._prepare()
        self.scan.log_skipped()
        index_of = {name: i for i, name in enumerate(self.class_names)}
        by_split: dict[str, list[TrainingItem]] = {"train": [], "val": [], "test": []}
        for item in items:
            by_split[item.split].append(item)
        empty = [name for name in ("train", "val") if not by_split[name]]
        if empty:
            raise GemLightningError(
                f"the {' and '.join(empty)} split of {self.root} is empty: add images or change "
                "data.val_fraction / data.test_fraction"
            )
        files = {name: [(item.image_file, index_of[item.label]) for item in by_split[name]] for name in by_split}
        # Decode JPEGs at a reduced scale but keep room for crops: twice the training size is plenty.
        self.datasets["train"] = GemImageDataset(files["train"], self.train_transform, 2 * self.image_size)
        self.datasets["val"] = evaluation_dataset(files["val"], self.image_size)
        leaked = [item.leaked for item in by_split["test"]]
        self.datasets["test"] = evaluation_dataset(files["test"], self.image_size, leaked)
        log.info(
            "%d classes; train %d, val %d, test %d images (%d test image(s) marked leaked; split=%s, seed %d, "
            "%s); manifest %s; report %s",
            len(self.class_names),
            len(by_split["train"]),
            len(by_split["val"]),
            len(by_split["test"]),
            sum(item.leaked for item in by_split["test"]),
            self.split,
            self.split_seed,
            self.background.backend.describe() if self.background else "original photos",
            self.manifest_file,
            self.report_file,
        )

    # -- what the model needs to know ----------------------------------------------------------------------

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.scan is not None:
            return self.scan.class_names
        _, names = discover_classes(self.root)
        return names[: self.max_classes] if self.max_classes is not None else names

    def split_counts(self) -> dict[str, Counter]:
        """Images per class for each split, for reports and tests."""
        return {
            name: Counter(self.class_names[label] for _, label in dataset.items)
            for name, dataset in self.datasets.items()
        }

    # -- loaders -------------------------------------------------------------------------------------------

    def _loader(self, name: str, training: bool = False) -> DataLoader:
        dataset = self.datasets[name]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=training,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            # A last training batch of one image breaks BatchNorm; dropping a remainder is harmless when
            # the order is reshuffled every epoch.
            drop_last=training and len(dataset) > self.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", training=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        if not self.datasets["test"].items:
            raise GemLightningError(f"the test split of {self.root} is empty; set data.test_fraction above 0")
        return self._loader("test")
