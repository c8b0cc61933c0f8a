"""The LightningDataModule: scans and splits a gemstone folder, and serves augmented uint8 batches.

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

from gem_lightning.dataset_scan import DatasetScan, discover_classes, scan_dataset
from gem_lightning.demo_data import DemoGemSet
from gem_lightning.errors import GemLightningError
from gem_lightning.image_files import load_rgb
from gem_lightning.splits import assign_splits, manifest_path, render_manifest, write_manifest

log = logging.getLogger(__name__)


def eval_transform(image_size: int) -> v2.Transform:
    """Shorter side to ``image_size``, then the centre square: what validation, test and prediction see."""
    return v2.Compose([v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])


class GemImageDataset(Dataset):
    """(uint8 CHW tensor, class index) pairs from files under ``root``."""

    def __init__(self, root: Path, items: list[tuple[str, int]], transform: Callable, decode_min_side: int):
        self.root = Path(root)
        self.items = items
        self.transform = transform
        self.decode_min_side = decode_min_side

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        relative, label = self.items[index]
        image = load_rgb(self.root / relative, min_side=self.decode_min_side)
        return self.transform(v2.functional.pil_to_tensor(image)), label


def _resolve_num_workers(num_workers: int | str) -> int:
    if num_workers == "auto":
        # Leave no core idle but do not spawn more decoders than a laptop-sized batch needs.
        return min(8, os.cpu_count() or 1)
    if isinstance(num_workers, int) and num_workers >= 0:
        return num_workers
    raise GemLightningError(f"data.num_workers={num_workers!r}: use a whole number >= 0 or 'auto'")


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
        self.scan: DatasetScan | None = None
        self.assignment: dict[str, str] | None = None  # file path -> split, fixed for this module's life
        self.manifest_file: Path | None = None
        self.datasets: dict[str, GemImageDataset] = {}

    # -- preparation -------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Render the demo set if asked; scan the folder and write the split manifest (rank 0 only)."""
        if self.demo is not None:
            self.demo.render(self.root)
        self._scan_and_split()

    def _scan_and_split(self) -> dict[str, str]:
        """Scan, split and write the manifest once per data module.

        train() and Lightning's fit and test each call prepare_data/setup; reusing the first result skips
        repeated scans and guarantees that testing sees the split that training saw.
        """
        if self.assignment is not None:
            return self.assignment
        scan = scan_dataset(self.root, self.cache_dir, self.max_image_pixels)
        manifest_file = manifest_path(
            self.cache_dir, scan, self.split, self.split_seed, self.val_fraction, self.test_fraction
        )
        if self.max_classes is not None:
            scan = scan.first_classes(self.max_classes)
            # Its own manifest, so switching between the subset and the whole set is not a "changed folder".
            manifest_file = manifest_file.with_name(f"{manifest_file.stem}-first{self.max_classes}.csv")
        assignment = assign_splits(scan, self.split, self.split_seed, self.val_fraction, self.test_fraction)
        self.manifest_file = manifest_file
        write_manifest(self.manifest_file, render_manifest(scan, assignment))
        self.scan, self.assignment = scan, assignment
        return assignment

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        assignment = self._scan_and_split()
        self.scan.log_skipped()
        index_of = {name: i for i, name in enumerate(self.class_names)}
        items: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
        for item in self.scan.usable:
            items[assignment[item.path]].append((item.path, index_of[item.label]))
        empty = [name for name in ("train", "val") if not items[name]]
        if empty:
            raise GemLightningError(
                f"the {' and '.join(empty)} split of {self.root} is empty: add images or change "
                "data.val_fraction / data.test_fraction"
            )
        # Decode JPEGs at a reduced scale but keep room for crops: twice the training size is plenty.
        decode_min_side = 2 * self.image_size
        evaluation = eval_transform(self.image_size)
        for name, transform in (("train", self.train_transform), ("val", evaluation), ("test", evaluation)):
            self.datasets[name] = GemImageDataset(self.root, items[name], transform, decode_min_side)
        counts = {name: len(entries) for name, entries in items.items()}
        log.info(
            "%d classes; train %d, val %d, test %d images (split=%s, seed %d); manifest %s",
            len(self.class_names),
            counts["train"],
            counts["val"],
            counts["test"],
            self.split,
            self.split_seed,
            self.manifest_file,
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
