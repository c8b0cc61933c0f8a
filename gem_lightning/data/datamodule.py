"""The LightningDataModule: prepares a gemstone folder (``data.preparation``) and serves uint8 batches.

Batches stay uint8 (N, 3, H, W) all the way to the model, which normalises them with its backbone's mean and
std: a quarter of the bytes to copy to a GPU, and normalisation the checkpoint carries with the weights.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, TensorDataset

from gem_lightning.choices import checked_choice, plain_value
from gem_lightning.data.background.cut_outs import BackgroundRemoval
from gem_lightning.data.background.swap import BackgroundSwap
from gem_lightning.data.batch_augmentation import BatchAugmentation
from gem_lightning.data.demo import DemoGemSet
from gem_lightning.data.image_arrays import build_mask_array, stored_side
from gem_lightning.data.image_dataset import GemImageDataset, collate_batch
from gem_lightning.data.preparation import PreparedFolder, SplitSettings, prepare_folder, rows_by_split, split_datasets
from gem_lightning.data.scan import discover_classes
from gem_lightning.data.training_items import TrainingItem
from gem_lightning.errors import GemLightningError
from gem_lightning.files.atomic_writes import folder_is_writable
from gem_lightning.machine import auto_settings

log = logging.getLogger(__name__)


class GemDataModule(pl.LightningDataModule):
    """Every argument is a key of ``conf/data/gemstones.yaml``, the one place their values are kept: build it
    from a composed config (``hydra.utils.instantiate(cfg.data)``), not with values of your own."""

    def __init__(
        self,
        *,
        root: str,
        extra_roots: list[str],
        extra_roots_held_out: bool,
        cache_dir: str,
        split: str,
        val_fraction: float,
        test_fraction: float,
        split_seed: int,
        image_size: int,
        batch_size: int,
        num_workers: int | str,
        pin_memory: bool | str,
        max_image_pixels: int,
        max_classes: int | None,
        min_images_per_class: int,
        train_transform: Callable | None,
        augment_policy: str,
        demo: DemoGemSet | None,
        background: BackgroundRemoval | None,
        background_swap: BackgroundSwap | None,
        near_duplicate_threshold: float | None,
        label_conflicts: str,
        cache_images: bool,
        augment_on: str,
    ):
        super().__init__()
        if image_size < 16:
            raise GemLightningError(f"data.image_size={image_size} is too small; use 16 or more")
        if batch_size < 1:
            raise GemLightningError(f"data.batch_size={batch_size} must be at least 1")
        augment_on = checked_choice(augment_on, auto_settings.AugmentPlace, "data.augment_on")
        self.root = Path(root)
        self.extra_roots = [Path(folder) for folder in extra_roots or ()]
        # Config enums become their plain names.
        self.split_settings = SplitSettings(
            plain_value(split),
            split_seed,
            val_fraction,
            test_fraction,
            near_duplicate_threshold,
            plain_value(label_conflicts),
            max_classes,
            min_images_per_class,
            extra_roots_held_out,
        )
        self.cache_dir = Path(cache_dir)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers_setting = num_workers
        self.num_workers = auto_settings.loader_workers(num_workers)
        self.pin_memory = auto_settings.pin_memory(pin_memory)
        self.max_image_pixels = max_image_pixels
        # augment=none gives no transform: training then reads the evaluation squares as they are.
        self.augmented = train_transform is not None
        self.train_transform = train_transform
        self.augment_policy = augment_policy
        self.demo = demo
        self.background = background if background is not None and background.enabled else None
        self.background_swap = background_swap if background_swap is not None and background_swap.enabled else None
        self.cache_images = cache_images
        self.augment_on = augment_on
        # Row i: the rembg mask of prepared.items[i]'s training square, when background_swap is on.
        self.mask_array: Path | None = None
        self.augment_on_device = False
        # The policy for whole batches on the device, when augment_on_device (built in setup).
        self.batch_augmentation: BatchAugmentation | None = None
        # Each split as feature rows, served in place of the images: set for a head-only model by the
        # training.head_only_features callback, which owns how they are computed.
        self.feature_datasets: dict[str, TensorDataset] | None = None
        # The scan, the split plan (fixed for this module's life), the items, report, manifest and image arrays;
        # None until prepare_data.
        self.prepared: PreparedFolder | None = None
        self.datasets: dict[str, GemImageDataset] = {}
        self._cache_checked = False

    # -- preparation -------------------------------------------------------------------------------------

    def _check_cache_folder(self) -> None:
        """One line for a cache folder that cannot be made; one warning (once) for a read-only one."""
        if self._cache_checked:
            return
        self._cache_checked = True
        if not folder_is_writable(self.cache_dir, "paths.cache_dir"):
            log.warning(
                "the cache folder %s is read-only: only what is already cached in it can be used "
                "(anything missing stops the run with the file's name)",
                self.cache_dir,
            )

    def prepare_data(self) -> None:
        """Render the demo set if asked; scan, split, cut out backgrounds, write manifest and report."""
        self._check_cache_folder()
        if self.demo is not None:
            self.demo.render(self.root)
        self._prepare()

    def check(self) -> None:
        """Fail now, before any work, if something preparation needs is missing (data folder, model file)."""
        self._check_cache_folder()
        if self.demo is None:
            discover_classes(self.root)
        for folder in self.extra_roots:
            if not folder.is_dir():
                raise GemLightningError(
                    f"data.extra_roots: {folder} is not a folder. Give folders of <class>/<photo> from other "
                    "sources, e.g. data.extra_roots=[/photos/my-shop], or leave the key empty"
                )
            discover_classes(folder)
        if self.background is not None:
            self.background.check()
        if self.background_swap is not None:
            self.background_swap.mask_backend.check()

    def _prepare(self) -> list[TrainingItem]:
        """Everything before training (``data.preparation``), once per data module.

        train() and Lightning's fit and test each call prepare_data/setup; reusing the first result skips
        repeated scans and guarantees that testing sees the split that training saw. Under DDP every rank
        runs this; the per-variant lock in the background cache makes all but one find the work done.
        """
        if self.prepared is not None:
            return self.prepared.items
        self.check()
        sides = (self.image_size, self.training_side) if self.augmented else (self.image_size,)
        self.prepared = prepare_folder(
            self.root,
            self.extra_roots,
            self.cache_dir,
            self.split_settings,
            max_image_pixels=self.max_image_pixels,
            background=self.background,
            array_sides=sides if self.cache_images else (),
            num_workers=self.num_workers,
        )
        return self.prepared.items

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        items = self._prepare()
        self.prepared.scan.log_skipped()
        by_split = rows_by_split(items)
        empty = [name for name in ("train", "val") if not by_split[name]]
        if empty:
            raise GemLightningError(
                f"the {' and '.join(empty)} split of {self.root} is empty: add images or change "
                "data.val_fraction / data.test_fraction"
            )
        if self.background_swap is not None and self.mask_array is None and self._head_only_model() is None:
            # Here rather than in _prepare: a head-only run trains on features of the photos as they are, so
            # it would never read the masks, the slowest thing preparation computes.
            files = [item.image_file for item in items]
            backend = self.background_swap.mask_backend
            self.mask_array = build_mask_array(files, self.training_side, self.cache_dir, backend)
        self.augment_on_device = self.augmented and auto_settings.augment_on_device(
            self.augment_on, self._model_on_gpu()
        )
        # On the device, the loader hands over the squares and on_after_batch_transfer augments them.
        transform = None if self.augment_on_device else self.train_transform
        if self.augment_on_device:
            self.batch_augmentation = BatchAugmentation(self.train_transform)
            log.info("augmentation on the device, %s", self.batch_augmentation.describe())
        swap = self.background_swap if self.mask_array is not None else None
        self.datasets = split_datasets(
            by_split,
            self.class_names,
            evaluation=(self.image_size, self.eval_array),
            training=(self.training_side, self.train_array, transform) if self.augmented else None,
            masks=(self.mask_array, swap) if swap is not None else None,
        )
        if self.mask_array is not None:
            log.info("background swap: %s", self.background_swap.describe())
        log.info(self.prepared.summary())

    # Every split image's square, row i = prepared.items[i]: at image_size for evaluation (and training without
    # augmentation), and at stored_side(image_size) for augmentation to crop and rotate; None with cache_images off.
    @property
    def eval_array(self) -> Path | None:
        arrays = self.prepared.image_arrays if self.prepared is not None else []
        return arrays[0] if arrays else None

    @property
    def train_array(self) -> Path | None:
        arrays = self.prepared.image_arrays if self.prepared is not None else []
        return arrays[1] if len(arrays) > 1 else None

    @property
    def training_side(self) -> int:
        """Side of the squares the training split is read at: larger ones for augmentation to cut into."""
        return stored_side(self.image_size) if self.augmented else self.image_size

    # -- what the model needs to know ----------------------------------------------------------------------

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.prepared is not None:
            return self.prepared.scan.class_names
        names = tuple(
            sorted({name for folder in (self.root, *self.extra_roots) for name in discover_classes(folder)[1]})
        )
        first = self.split_settings.max_classes
        return names[:first] if first is not None else names

    def split_counts(self) -> dict[str, Counter]:
        """Images per class for each split, for reports and tests."""
        return {
            name: Counter(self.class_names[label] for _, label in dataset.items)
            for name, dataset in self.datasets.items()
        }

    # -- loaders -------------------------------------------------------------------------------------------

    def _head_only_model(self) -> pl.LightningModule | None:
        model = self.trainer.lightning_module if self.trainer is not None else None
        return model if model is not None and model.hparams.get("head_only") else None

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With augmentation on the device: the stored squares of a training batch through the policy, where
        the batch now lives, as whole-batch operations (every image still draws its own angle, crop and flips)."""
        on_device = self.batch_augmentation is not None and self.trainer is not None
        if on_device and self.trainer.training and batch[0].ndim == 4:
            batch = [self.batch_augmentation(batch[0]), *batch[1:]]
        return batch

    def _model_on_gpu(self) -> bool:
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def loader_processes(self, dataset: GemImageDataset | TensorDataset) -> int:
        """Loader processes for ``dataset``: none for feature rows (in memory already), else
        ``data.num_workers`` as ``auto_settings.loader_processes`` resolves it for this loader."""
        if isinstance(dataset, TensorDataset):
            return 0
        reads_only = dataset.array is not None and dataset.transform is None
        return auto_settings.loader_processes(self.num_workers_setting, reads_only, self._model_on_gpu())

    def _loader(self, name: str, training: bool = False) -> DataLoader:
        dataset = self.feature_datasets[name] if self.feature_datasets is not None else self.datasets[name]
        workers = self.loader_processes(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=training,
            sampler=None if training else self._evaluation_sampler(dataset),
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=collate_batch,
            # A last training batch of one image breaks BatchNorm; dropping a remainder is harmless when
            # the order is reshuffled every epoch.
            drop_last=training and len(dataset) > self.batch_size,
        )

    def _evaluation_sampler(self, dataset: Dataset) -> UnrepeatedDistributedSampler | None:
        """Under data parallelism, each evaluation image on exactly one process: Lightning's default sampler
        pads the split to a multiple of the processes with repeats, which would count them twice in val/acc."""
        if self.trainer is None or self.trainer.world_size < 2:
            return None  # one process: Lightning's sequential sampler
        return UnrepeatedDistributedSampler(
            dataset, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", training=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        if not self.datasets["test"].items:
            raise GemLightningError(f"the test split of {self.root} is empty; set data.test_fraction above 0")
        return self._loader("test")
