"""What every bench measurement shares: its settings (``Setup``), a clock of images per second after warm-up
batches, and the process's peak memory."""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass

import torch
from torch.utils.data import DataLoader


@dataclass
class Setup:
    """Everything a measurement needs, picklable for the measuring process."""

    photos: str  # ImageFolder root for the plain pipeline (class folders)
    overrides: list[str]  # train.py overrides that build our pipeline on the same photos
    image_size: int
    batch_size: int
    num_workers: int
    warmup_batches: int
    timed_batches: int
    loader_batches: int
    device: str = "cpu"  # cpu or cuda: where both pipelines run

    def as_dict(self) -> dict:
        return asdict(self)


def peak_memory_mb() -> float:
    """This process's peak resident set size (loader processes not included)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def memory(device: str) -> dict:
    """Peak memory of this process: resident (MB), and on CUDA the most the GPU held in tensors (MB)."""
    figures = {"peak_mb": peak_memory_mb()}
    if device.startswith("cuda"):
        figures["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return figures


class Clock:
    """Images per second over the batches after the warm-up ones."""

    def __init__(self, warmup: int, device: str = "cpu"):
        self.warmup = warmup
        # GPU work is asynchronous: wait for it before reading the clock.
        self.device_sync = torch.cuda.synchronize if device.startswith("cuda") else None
        self.started: float | None = None
        self.images = 0
        self.seconds = 0.0

    def batch_done(self, index: int, images: int) -> None:
        if self.device_sync is not None:
            self.device_sync()
        now = time.perf_counter()
        if index == self.warmup - 1:
            self.started = now
        elif index >= self.warmup:
            self.images += images
            self.seconds = now - self.started

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def time_loader(loader: DataLoader, setup: Setup) -> dict:
    clock = Clock(setup.warmup_batches)
    total = setup.warmup_batches + setup.loader_batches
    for index, batch in enumerate(cycle(loader, total)):
        clock.batch_done(index, len(batch[0]))
    return {"images_per_second": clock.rate, "peak_mb": peak_memory_mb()}


def cycle(loader: DataLoader, batches: int):
    """``batches`` batches, starting the loader over when a small folder runs out."""
    served = 0
    while served < batches:
        for batch in loader:
            yield batch
            served += 1
            if served == batches:
                return
