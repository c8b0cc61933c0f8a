"""Every image a run trains on, decoded once into one uint8 array file, so an epoch decodes no JPEG."""

# ``stored_image(path, side)`` is the one decoding step, cached or not: decode upright RGB (JPEGs at reduced
# scale), shorter side to ``side``, centre square. ``build_image_array`` writes it for a list of files into
# ``<cache_dir>/image_arrays/<side>px-<count>-<key>.npy``, a plain ``.npy`` of shape (N, side, side, 3) that
# loaders memory-map: the page cache holds it once for every loader process and every run on the machine.
# Rows are stored channels-last, the layout the model's convolutions take (and torchvision's fastest for
# resizing uint8 images, as the augmentation's crops do). A data module keeps two arrays: squares at the
# model's input size for evaluation, and larger ones for augmentation to cut into.
#
# ``build_mask_array`` keeps, beside the training array, the rembg mask of each of its squares
# (``<same name>-mask-<model>.npy``, (N, side, side)) for ``background_swap``; it is built the same way.
#
# The key hashes each file's path, size and modification time with the side and format, so a changed photo
# or cut-out makes a new array. Building goes through ``*.partial.npy`` with a progress record rewritten
# (atomically) every few hundred rows, under a lock: an interrupted build resumes where it stopped, and a
# second process (a sweep worker, a DDP rank) waits and then finds the array done. The finished array is
# renamed into place in one step.

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from gem_lightning.data.background.backends import RembgBackend
from gem_lightning.data.image_files import load_rgb
from gem_lightning.errors import GemLightningError
from gem_lightning.files.atomic_writes import write_text_atomically
from gem_lightning.files.locks import exclusive_lock
from gem_lightning.machine import auto_settings
from gem_lightning.progress_bars import progress_with_eta

log = logging.getLogger(__name__)

ARRAY_FORMAT = 2  # 1 stored (N, 3, S, S)
# Rows written between two progress records: what an interrupted build may have to decode again.
ROWS_PER_RECORD = 256


def stored_side(image_size: int) -> int:
    """Side of the squares training augments, for a model input of ``image_size``: 9/7 of it (288 for 224).

    Evaluation reads squares of ``image_size`` itself, made in one resize.
    """
    # At 9/7 random crops are not enlarged: the policies' RandomResizedCrop keeps at least 60 % of the area, a
    # side of at least sqrt(0.6) x 9/7, about image_size, so training images are as sharp as evaluation ones.
    return round(image_size * 9 / 7)


def stored_image(path: Path, side: int) -> torch.Tensor:
    """The uint8 (3, side, side) tensor every pipeline starts from: decoded, shorter side to ``side``, centre
    square. JPEGs decode at the coarsest DCT scale that keeps both sides at least ``side``."""
    image = v2.functional.pil_to_tensor(load_rgb(path, min_side=side))
    return v2.functional.center_crop(v2.functional.resize(image, side, antialias=True), side)


def array_file(files: Sequence[Path], side: int, cache_dir: Path) -> Path:
    """Where the array for ``files`` at ``side`` lives; it changes when any file changes."""
    digest = hashlib.sha256(f"{ARRAY_FORMAT}|{side}".encode())
    for path in files:
        stat = os.stat(path)
        digest.update(f"|{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return Path(cache_dir) / "image_arrays" / f"{side}px-{len(files)}-{digest.hexdigest()[:16]}.npy"


class _Decoder(Dataset):
    """Rows ``start..`` of the array, decoded in loader processes as (row, uint8 HWC array, None); a failure is
    returned, not raised, so the error names the file in one line instead of arriving wrapped in a worker
    traceback."""

    def __init__(self, files: Sequence[Path], side: int, start: int):
        self.files, self.side, self.start = list(files), side, start

    def __len__(self) -> int:
        return len(self.files) - self.start

    def row(self, index: int) -> np.ndarray:
        return stored_image(self.files[index], self.side).permute(1, 2, 0).numpy()

    def failure(self, row: int, error: str) -> str:
        """The one-line error for row ``row``, which failed with ``error``."""
        return (
            f"cannot decode {self.files[row]} while caching images: {error}. If the file changed since the data "
            "folder was scanned, run again (it is rescanned); otherwise remove the file"
        )

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str | None]:
        row = self.start + index
        try:
            return row, self.row(row), None
        except Exception as error:  # reported with the file's name by the builder
            return row, None, f"{type(error).__name__}: {error}"


class _Masker(_Decoder):
    """Rows ``start..`` of a mask array: the rembg mask (uint8, S x S) of each file's stored square, the very
    square training augments, so mask and photo line up pixel for pixel."""

    def __init__(self, files: Sequence[Path], side: int, start: int, backend: RembgBackend):
        super().__init__(files, side, start)
        self.backend = backend

    def row(self, index: int) -> np.ndarray:
        square = Image.fromarray(super().row(index), mode="RGB")
        return self.backend.mask(square)

    def failure(self, row: int, error: str) -> str:
        return (
            f"cannot compute the rembg {self.backend.model} mask of {self.files[row]} for background_swap: {error}. "
            "If the file changed since the data folder was scanned, run again; otherwise remove the file"
        )


def _as_list(batch: list) -> list:
    return batch


def build_image_array(
    files: Sequence[Path], side: int, cache_dir: Path, num_workers: int = 0, progress: bool = True
) -> Path:
    """Decode ``files`` once into their array file (resuming a partial one) and return its path."""
    return _build_rows(
        array_file(files, side, cache_dir),
        (len(files), side, side, 3),
        lambda start: _Decoder(files, side, start),
        num_workers,
        progress,
        f"decoding images once ({side} px)",
    )


def mask_array_file(files: Sequence[Path], side: int, cache_dir: Path, mask_model: str) -> Path:
    """Where the masks of ``files``' stored squares at ``side`` by rembg ``mask_model`` live."""
    images = array_file(files, side, cache_dir)
    return images.with_name(f"{images.stem}-mask-{mask_model}.npy")


def build_mask_array(
    files: Sequence[Path], side: int, cache_dir: Path, backend: RembgBackend, progress: bool = True
) -> Path:
    """Compute the rembg mask of each file's stored square once, into an (N, side, side) uint8 array file
    (row i for ``files[i]``, resumable as image arrays are), and return its path. The model runs in this
    process on every core: onnxruntime parallelises one image better than loader processes would share it."""
    final = mask_array_file(files, side, cache_dir, backend.model)
    if not final.is_file():
        backend.load(threads=auto_settings.thread_pool_size())
    return _build_rows(
        final,
        (len(files), side, side),
        lambda start: _Masker(files, side, start, backend),
        0,
        progress,
        f"finding the stone in each photo once (rembg {backend.model}, {side} px)",
    )


def _build_rows(
    final: Path,
    shape: tuple[int, ...],
    rows_from: Callable[[int], _Decoder],
    num_workers: int,
    progress: bool,
    what: str,
) -> Path:
    """Write the uint8 array ``final`` of ``shape`` row by row from ``rows_from(first row to do)``: through
    ``*.partial.npy`` with a progress record, under a lock, renamed into place when complete."""
    if final.is_file():
        return final
    partial = final.with_suffix(".partial.npy")
    record = final.with_suffix(".progress.json")
    with exclusive_lock(final.with_suffix(".lock")):
        if final.is_file():  # built by another process while this one waited
            return final
        done = 0
        if partial.is_file() and record.is_file():
            try:
                done = int(json.loads(record.read_text())["done"])
                rows = np.load(partial, mmap_mode="r+")
                if rows.shape != shape or rows.dtype != np.uint8:
                    done = 0
            except (OSError, ValueError, KeyError, json.JSONDecodeError):
                done = 0
        if done == 0:
            partial.unlink(missing_ok=True)
            rows = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
        else:
            log.info("resuming %s: %d of %d rows already done", partial.name, done, shape[0])
        _fill(rows, rows_from(done), done, record, num_workers, progress, what)
        rows.flush()
        del rows
        os.replace(partial, final)
        record.unlink(missing_ok=True)
    log.info("cached %d rows (%s) in %s (%.0f MB)", shape[0], what, final, final.stat().st_size / 1e6)
    return final


def _fill(
    rows: np.ndarray, source: _Decoder, done: int, record: Path, num_workers: int, progress: bool, what: str
) -> None:
    if len(source) == 0:
        return
    # Its own generator: drawing the loader's seed from the global one would make a run's initial weights
    # and shuffling depend on whether the cache existed.
    loader = DataLoader(
        source,
        batch_size=min(32, ROWS_PER_RECORD),
        num_workers=num_workers,
        collate_fn=_as_list,
        generator=torch.Generator(),
    )
    since_record = 0
    with progress_with_eta(progress) as bar:
        task = bar.add_task(what, total=len(rows), completed=done)
        for batch in loader:
            for row, value, error in batch:
                if error is not None:
                    raise GemLightningError(source.failure(row, error))
                rows[row] = value
            since_record += len(batch)
            bar.advance(task, len(batch))
            if since_record >= ROWS_PER_RECORD:
                rows.flush()  # the rows first, then the record that counts them
                write_text_atomically(record, json.dumps({"done": batch[-1][0] + 1}))
                since_record = 0
