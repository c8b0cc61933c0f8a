"""What each ``auto`` setting means on this machine: cores, loader workers, thread pools, device, precision.

Every count starts from ``usable_cores()``, the cores this process may run on (its CPU affinity), not the
machine's: a ``sweep.py --jobs K`` worker is confined to its share, and whatever it starts (loaders, rembg
sessions, scan threads) must fit in that share. Explicit values pass through, checked; bad ones are one line.
"""

from __future__ import annotations

import os
from enum import Enum
from typing import Any

import torch

from gem_lightning.errors import GemLightningError

MAX_LOADER_WORKERS = 8  # more decoders than a laptop-sized batch needs only cost memory


def _core_ids() -> list[int] | None:
    """The cores in this process's affinity mask, in order; None where the OS has no such mask."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def usable_cores() -> int:
    """The cores this process may use: its affinity mask where the OS has one, else every core."""
    cores = _core_ids()
    return len(cores) if cores else os.cpu_count() or 1


def loader_workers(value: int | str, key: str = "data.num_workers") -> int:
    """``auto``: one loader process per usable core, at most ``MAX_LOADER_WORKERS``; else a whole number >= 0."""
    return _count(value, key, min(MAX_LOADER_WORKERS, usable_cores()), minimum=0)


def loader_processes(value: int | str, reads_only: bool, model_on_gpu: bool) -> int:
    """Processes for one data loader: ``value`` resolved by ``loader_workers``, except that ``auto`` uses
    none for a loader that only copies cached squares while the model runs on the CPU."""
    # Handing batches between processes then keeps the main process busier than copying them itself; on a
    # GPU the processes still overlap loading with compute.
    if value == "auto" and reads_only and not model_on_gpu:
        return 0
    return loader_workers(value)


class AugmentPlace(str, Enum):
    """``data.augment_on``: where training augmentation runs (the config schema types the key with it)."""

    auto = "auto"  # the device when it is a GPU, else the loader
    loader = "loader"  # the loader processes
    device = "device"  # the batch, after it reaches the model's device


def augment_on_device(value: str, model_on_gpu: bool) -> bool:
    """Where ``data.augment_on`` runs training augmentation: ``auto`` is on the device when it is a GPU."""
    return value == "device" or (value == "auto" and model_on_gpu)


def core_shares(jobs: int) -> list[str | None]:
    """The usable cores split into ``jobs`` disjoint shares ("0,1", "2,3"); ``None`` each where they cannot be."""
    cores = _core_ids()
    if cores is None or len(cores) < jobs:
        return [None] * jobs
    share = len(cores) // jobs
    return [",".join(str(c) for c in cores[i * share : (i + 1) * share]) for i in range(jobs)]


def process_count(value: int | str, key: str) -> int:
    """``auto``: one process per usable core; else a whole number >= 1 (background removal's ``workers``)."""
    return _count(value, key, usable_cores(), minimum=1)


def threads_per_process(value: int | str, key: str, processes: int) -> int:
    """``auto``: the usable cores shared out between ``processes`` processes, at least one thread each."""
    return _count(value, key, max(1, usable_cores() // max(1, processes)), minimum=1)


def thread_pool_size() -> int:
    """Threads for one in-process pool (file checks, fingerprints, a rembg session): every usable core."""
    return usable_cores()


def _count(value: int | str, key: str, auto: int, minimum: int) -> int:
    """``auto`` -> ``auto``; a whole number >= ``minimum`` as it is; anything else one line naming ``key``."""
    if value == "auto":
        return auto
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return value
    raise GemLightningError(f"{key}={value!r}: use a whole number >= {minimum} or 'auto'")


def pin_memory(value: bool | str) -> bool:
    """``auto``: pinned loader memory only where there is a CUDA device to copy to."""
    return torch.cuda.is_available() if value == "auto" else bool(value)


def inference_device(device: str) -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU; a named device must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise GemLightningError(f"device={device!r}: use auto, cpu, cuda or cuda:<index>") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise GemLightningError(f"device={device}: this machine has no CUDA GPU; use device=cpu or device=auto")
    return resolved


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bfloat16 instructions (AMX or AVX512-BF16: Intel Sapphire Rapids+, AMD Zen 4+)."""
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def automatic_precision(on_gpu: bool) -> str:
    """What ``trainer.precision: auto`` means: the fastest precision the device runs natively.

    GPUs: bf16-mixed where bfloat16 is supported, else 16-mixed; CPUs: bf16-mixed with AMX/AVX512-BF16,
    else 32-true (README.md, "Speed settings", has the measured gain).
    """
    # Mixed precision keeps float32 weights and runs matmuls/convolutions in a 16-bit type; where the
    # hardware has no native 16-bit path that is slower than float32, hence the checks.
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def trainer_precision_and_benchmark(kwargs: dict[str, Any], on_gpu: bool) -> dict[str, Any]:
    """Trainer arguments with ``precision: auto`` and ``benchmark: auto`` resolved (others unchanged)."""
    resolved = dict(kwargs)
    if resolved.get("precision") == "auto":
        resolved["precision"] = automatic_precision(on_gpu)
    if resolved.get("benchmark") == "auto":
        # cuDNN's kernel search picks non-deterministic kernels; a deterministic run must not use it.
        resolved["benchmark"] = not resolved.get("deterministic")
    return resolved
