"""The ``auto`` settings: every count fits the cores this process may use (a sweep worker's share)."""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gem_lightning.data import duplicates as duplicate_groups
from gem_lightning.data import scan as dataset_scan
from gem_lightning.data.background.cut_outs import BackgroundRemoval
from gem_lightning.errors import GemLightningError
from gem_lightning.machine import auto_settings


@pytest.fixture
def one_core():
    """Confine this thread (and the threads it starts) to one core, as ``sweep.py --jobs K`` confines a
    worker to its share, and give the rest back afterwards."""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("this OS has no CPU affinity (os.sched_setaffinity)")
    cores = os.sched_getaffinity(0)
    if len(cores) < 2:
        pytest.skip("needs 2 or more usable cores to tell the machine's count from this process's share")
    os.sched_setaffinity(0, {min(cores)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


class _RecordingPool(concurrent.futures.ThreadPoolExecutor):
    sizes: list[int] = []

    def __init__(self, max_workers=None, *args, **kwargs):
        _RecordingPool.sizes.append(max_workers)
        super().__init__(max_workers, *args, **kwargs)


def _two_photos(root: Path) -> None:
    for index, label in enumerate(("Ruby", "Emerald")):
        (root / label).mkdir(parents=True)
        pixels = np.full((24, 24, 3), 40 + 100 * index, dtype=np.uint8)
        Image.fromarray(pixels).save(root / label / "a.png")


def test_every_auto_count_fits_a_one_core_share(one_core, tmp_path, monkeypatch):
    assert auto_settings.usable_cores() == 1
    assert auto_settings.loader_workers("auto") == 1
    removal = BackgroundRemoval()
    assert (removal.workers, removal.threads_per_worker) == (1, 1)
    assert auto_settings.core_shares(2) == [None, None]

    # The file checks and the fingerprints run in thread pools: one thread each in a one-core share.
    _RecordingPool.sizes = []
    monkeypatch.setattr(dataset_scan, "ThreadPoolExecutor", _RecordingPool)
    monkeypatch.setattr(duplicate_groups, "ThreadPoolExecutor", _RecordingPool)
    root = tmp_path / "gems"
    _two_photos(root)
    scan = dataset_scan.scan_dataset(root, tmp_path / "cache", max_pixels=10_000_000)
    duplicate_groups.fingerprints(scan.files, scan.file, tmp_path / "cache")
    assert _RecordingPool.sizes == [1, 1]


def test_the_machines_cores_are_shared_out_when_the_process_may_use_them_all():
    usable = auto_settings.usable_cores()
    assert auto_settings.loader_workers("auto") == min(auto_settings.MAX_LOADER_WORKERS, usable)
    removal = BackgroundRemoval(workers=1)
    assert removal.threads_per_worker == usable
    shares = auto_settings.core_shares(usable)
    if hasattr(os, "sched_getaffinity"):
        assert sorted(int(core) for share in shares for core in share.split(",")) == sorted(os.sched_getaffinity(0))


def test_auto_loaders_copy_cached_squares_in_the_main_process_on_a_cpu():
    assert auto_settings.loader_processes("auto", reads_only=True, model_on_gpu=False) == 0
    assert auto_settings.loader_processes("auto", reads_only=True, model_on_gpu=True) >= 1
    assert auto_settings.loader_processes("auto", reads_only=False, model_on_gpu=False) >= 1
    assert auto_settings.loader_processes(3, reads_only=True, model_on_gpu=False) == 3
    assert auto_settings.augment_on_device("auto", model_on_gpu=True)
    assert not auto_settings.augment_on_device("auto", model_on_gpu=False)
    assert not auto_settings.augment_on_device("loader", model_on_gpu=True)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: auto_settings.loader_workers(-1), "data.num_workers=-1: use a whole number >= 0 or 'auto'"),
        (lambda: auto_settings.loader_workers(True), "data.num_workers=True: use a whole number >= 0 or 'auto'"),
        (lambda: BackgroundRemoval(workers=0), "background.workers=0: use a whole number >= 1 or 'auto'"),
        (
            lambda: BackgroundRemoval(threads_per_worker="many"),
            "background.threads_per_worker='many': use a whole number >= 1 or 'auto'",
        ),
    ],
)
def test_a_bad_count_is_one_line_naming_its_key(call, message):
    with pytest.raises(GemLightningError) as error:
        call()
    assert str(error.value) == message
