"""The one dataset of images: stored squares (cached or decoded), augmented for training."""

# Batches are uint8 (N, 3, H, W); the model converts and normalises them itself. Evaluation reads squares of
# exactly the model's size (``stored_image(path, image_size)``: shorter side to the size, centre square), so an
# evaluation batch is a copy of cached rows with no transform at all; training reads larger squares (9/7 of the
# size) that its augmentation crops and rotates down. ``evaluation_dataset`` is the one evaluation path, shared
# by validation, test, prediction, export checks, reports and the web page.

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from gem_lightning.data.image_arrays import stored_image


class AssembledBatch(tuple):
    """A batch the dataset put together itself (``GemImageDataset.__getitems__``): collating passes it on."""


def collate_batch(data: AssembledBatch | list) -> list:
    """The loaders' collate function: an assembled batch as it is (no second copy of every image),
    anything else as PyTorch's default collation would."""
    return list(data) if isinstance(data, AssembledBatch) else default_collate(data)


class GemImageDataset(Dataset):
    """(uint8 CHW tensor, class index) pairs, or (tensor, index, leaked) when ``leaked`` flags are given.

    Each image is its stored square (row ``rows[i]`` of the memory-mapped ``array``, else decoded from its file),
    then ``background_swap`` with row ``rows[i]`` of ``masks`` (training only), then ``transform``. Loaders over
    it must use ``collate_batch`` (they fetch whole batches through ``__getitems__``).
    """

    # The test set carries leak flags so evaluation can also report accuracy without leaked duplicates. The
    # cached row and the decoded file are the same tensor (tested); transform None leaves the square as it is.

    def __init__(
        self,
        files: list[tuple[Path, int]],
        transform: Callable | None,
        side: int,
        leaked: list[bool] | None = None,
        array: Path | None = None,
        rows: list[int] | None = None,
        masks: Path | None = None,
        background_swap: Callable | None = None,
    ):
        self.items = files
        self.transform = transform
        self.side = side
        self.leaked = leaked
        self.array = array
        self.rows = rows
        self.masks = masks
        self.background_swap = background_swap
        if background_swap is not None and (masks is None or rows is None):
            raise ValueError("a background swap needs the mask array and each image's row in it")
        # The memory maps, opened in each process that reads.
        self._rows_view: np.ndarray | None = None
        self._masks_view: np.ndarray | None = None

    def __getstate__(self) -> dict:
        # Loader processes get the file name, not the map: pickling a memmap would copy the whole array.
        return {**self.__dict__, "_rows_view": None, "_masks_view": None}

    def __len__(self) -> int:
        return len(self.items)

    def stored_image(self, index: int) -> torch.Tensor:
        return self._stored_images([index])[0]

    def _stored_images(self, indices: list[int]) -> torch.Tensor:
        """(N, 3, S, S) uint8 in channels-last layout, as the array stores its rows (N, S, S, 3): the layout
        the model's convolutions take, and torchvision's fastest for resizing uint8 images."""
        if self.array is None:
            decoded = torch.stack([stored_image(self.items[i][0], self.side) for i in indices])
            return decoded.contiguous(memory_format=torch.channels_last)
        if self._rows_view is None:
            self._rows_view = np.load(self.array, mmap_mode="r")
        rows = np.asarray(self._rows_view[[self.rows[i] for i in indices]])
        return torch.from_numpy(rows).permute(0, 3, 1, 2)

    def _batch(self, indices: list[int]) -> list[torch.Tensor]:
        images = self._stored_images(indices)
        if self.background_swap is not None:  # before the policy, which crops and turns photo and stone alike
            if self._masks_view is None:
                self._masks_view = np.load(self.masks, mmap_mode="r")
            masks = torch.from_numpy(np.asarray(self._masks_view[[self.rows[i] for i in indices]]))
            images = torch.stack([self.background_swap(image, mask) for image, mask in zip(images, masks, strict=True)])
        if self.transform is not None:  # every image draws its own angle, crop and flips
            images = torch.stack([self.transform(image) for image in images])
        columns = [images, torch.tensor([self.items[i][1] for i in indices], dtype=torch.long)]
        if self.leaked is not None:
            columns.append(torch.tensor([self.leaked[i] for i in indices], dtype=torch.bool))
        return columns

    def __getitems__(self, indices: list[int]) -> AssembledBatch:
        """A whole batch at once (the DataLoader calls this when it exists): one read of the rows and one
        tensor, which the loader's ``collate_batch`` passes on without copying every image again."""
        return AssembledBatch(self._batch(indices))

    def __getitem__(self, index: int) -> tuple:
        image, label, *leaked = self._batch([index])
        return (image[0], int(label[0]), *(bool(flag[0]) for flag in leaked))

    def subset(self, indices: list[int]) -> GemImageDataset:
        """The images at ``indices``, read as this dataset reads them (same squares, rows and transform)."""
        return GemImageDataset(
            [self.items[i] for i in indices],
            self.transform,
            self.side,
            leaked=[self.leaked[i] for i in indices] if self.leaked is not None else None,
            array=self.array,
            rows=[self.rows[i] for i in indices] if self.rows is not None else None,
            masks=self.masks,
            background_swap=self.background_swap,
        )


def evaluation_dataset(
    files: list[tuple[Path, int]], image_size: int, leaked: list[bool] | None = None
) -> GemImageDataset:
    """What validation, test, prediction, export checks and reports read: the one evaluation path.

    Each file's square at ``image_size`` (decoded now); the data module's validation and test datasets read
    the very same squares from its cached evaluation array.
    """
    return GemImageDataset(files, None, image_size, leaked)
