"""How fast our pipeline is beside the report's plain one (command: ``gem-bench``)."""

# One table, every figure measured in this run, each in a fresh process (``fresh_processes``; the measurements:
# ``plain_pipeline``, ``our_pipeline``):
# data-loader images/s with and without augmentation, training and evaluation images/s, the head-only epoch
# on cached features, peak memory; with CUDA also GPU training images/s and the epoch time for 2,856 images
# (Kaggle's training set) at the configured size. ``tiny=true`` runs it all on the rendered demo set in
# seconds, to prove the command works. The table is printed and written to ``bench.md`` and ``bench.json``.
#
# The plain side is the student report's recipe as such a script is written: torchvision ``ImageFolder`` on
# the raw photos (each JPEG decoded every epoch), rotate/crop/flip with the classic transforms, float32,
# Adam at 3e-4, glibc's default allocator. Ours is the project's real path: the Hydra-composed data module
# (uint8 array cache, transforms v2), the LightningModule under a Lightning Trainer with the configured
# precision and memory format, and the allocator setting of the entry points.

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from gem_lightning.bench import our_pipeline, plain_pipeline
from gem_lightning.bench.fresh_processes import each_in_a_fresh_fork, in_fresh_process
from gem_lightning.bench.timing import Setup
from gem_lightning.errors import GemLightningError
from gem_lightning.files.atomic_writes import write_text_atomically
from gem_lightning.machine import auto_settings

log = logging.getLogger(__name__)

KAGGLE_TRAIN_IMAGES = 2856  # the epoch the GPU target is stated for


@dataclass
class Row:
    measure: str
    unit: str
    plain: float | None
    ours: float | None
    plain_mb: float | None = None
    ours_mb: float | None = None
    note: str = ""

    @property
    def speedup(self) -> float | None:
        if self.plain is None or self.ours is None or not self.plain or not self.ours:
            return None
        # Seconds: less is better; images/s: more is better.
        return self.plain / self.ours if self.unit == "s" else self.ours / self.plain


def _rates(measure_name: str, plain: dict, ours: dict, note: str = "") -> Row:
    """An images/s row from two measurements' results (each with images_per_second and peak_mb)."""
    return Row(
        measure_name,
        "images/s",
        plain["images_per_second"],
        ours["images_per_second"],
        plain["peak_mb"],
        ours["peak_mb"],
        note,
    )


def _setups(cfg: DictConfig, run_dir: Path) -> tuple[Setup, Path]:
    """The shared settings, and the folder the plain pipeline reads (ours gets the same photos)."""
    cache_dir = Path(cfg.cache_dir).resolve()
    common = [
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={run_dir / 'lightning'}",
        f"paths.log_dir={run_dir / 'lightning'}",
        "model=resnet18",
        # ImageNet ResNet-18 weights cannot be fetched offline; a step costs the same without them.
        "model.pretrained=false",
        "augment=seed",
    ]
    if cfg.tiny:
        photos = cache_dir / "demo_gems"
        size, batch = 32, 8
        overrides = ["experiment=demo", "data.demo.images_per_class=12", "data.demo.image_size=48", *common]
    else:
        data_dir = Path(cfg.data_dir).resolve()
        if not data_dir.is_dir():
            raise GemLightningError(
                f"data_dir={cfg.data_dir} is not a folder: point it at the photos (Kaggle layout or <class>/ "
                "folders), or run python -m gem_lightning.cli.bench tiny=true"
            )
        kaggle = (data_dir / "train").is_dir()
        photos = data_dir / "train" if kaggle else data_dir
        size, batch = cfg.image_size, cfg.batch_size
        overrides = [*common, f"data.root={data_dir}", f"data.split={'predefined' if kaggle else 'pooled'}"]
    workers = auto_settings.loader_workers(cfg.num_workers, "num_workers")
    # Ours gets the setting as given, so num_workers=auto applies our own rule (none for cache-only loaders
    # on a CPU); the plain pipeline gets the number it resolves to.
    overrides += [f"data.image_size={size}", f"data.batch_size={batch}", f"data.num_workers={cfg.num_workers}"]
    overrides += list(cfg.train)
    setup = Setup(
        photos=str(photos),
        overrides=overrides,
        image_size=size,
        batch_size=batch,
        num_workers=workers,
        warmup_batches=1 if cfg.tiny else cfg.warmup_batches,
        timed_batches=2 if cfg.tiny else cfg.timed_batches,
        loader_batches=2 if cfg.tiny else cfg.loader_batches,
    )
    return setup, photos


def _head_only_row(result: dict, plain_eval: dict) -> Row:
    steady = result["epoch_seconds"][1:] or result["epoch_seconds"]
    # A plain frozen-backbone loop runs the backbone over every training image every epoch.
    plain = result["train_images"] / plain_eval["images_per_second"]
    note = (
        f"{result['train_images']} images; features {'computed' if result['features_computed'] else 'read'} "
        f"in {result['before_first_epoch_seconds']:.1f} s before epoch 1; plain = images / plain evaluation rate"
    )
    return Row("head-only epoch, cached features", "s", plain, sum(steady) / len(steady), None, result["peak_mb"], note)


def _device_augmentation_calls(setup: Setup) -> list:
    """Augmentation on the device: the loop over images that the whole-batch path replaced, and that path."""
    return [(our_pipeline.device_augmentation, (setup.as_dict(), batched)) for batched in (False, True)]


def _device_augmentation_row(setup: Setup, loop: dict, batched: dict) -> Row:
    """The two device-augmentation figures side by side (in the plain column the loop: the report's pipeline
    has no device path)."""
    where = "GPU" if setup.device.startswith("cuda") else "CPU"
    note = "augment=seed on stored squares; left: the policy image by image in a loop, right: BatchAugmentation"
    return _rates(f"augmentation on the {where}", loop, batched, note)


def _cuda_rows(setup: Setup) -> list[Row]:
    gpu = Setup(**{**setup.as_dict(), "device": "cuda"})
    plain = in_fresh_process(plain_pipeline.plain_training, gpu.as_dict())
    ours, loop, batched, epochs = each_in_a_fresh_fork(
        [
            (our_pipeline.our_training, (gpu.as_dict(),)),
            *_device_augmentation_calls(gpu),
            (our_pipeline.our_epochs, (gpu.as_dict(), 2, False)),
        ]
    )
    name = torch.cuda.get_device_name(0)
    note = (
        f"ours: {ours['precision']}, augmentation on the GPU; GPU memory plain {plain['gpu_peak_mb']:,.0f} MB, "
        f"ours {ours['gpu_peak_mb']:,.0f} MB"
    )
    rows = [_rates(f"GPU training ({name})", plain, ours, note), _device_augmentation_row(gpu, loop, batched)]
    seconds = epochs["epoch_seconds"][-1] * KAGGLE_TRAIN_IMAGES / epochs["train_images"]
    rows.append(
        Row(
            f"GPU epoch of {KAGGLE_TRAIN_IMAGES} images",
            "s",
            KAGGLE_TRAIN_IMAGES / plain["images_per_second"],
            seconds,
            None,
            epochs["peak_mb"],
            f"ours: second whole epoch of {epochs['train_images']} images, scaled; plain: from its images/s",
        )
    )
    return rows


def run_bench(cfg: DictConfig) -> list[Row]:
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise GemLightningError(f"device={cfg.device!r}: use auto, cpu or cuda")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise GemLightningError("device=cuda but torch.cuda.is_available() is False on this machine; use device=cpu")
    run_dir = Path(cfg.output_dir) / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    setup, photos = _setups(cfg, run_dir)
    settings = setup.as_dict()
    loaders = (
        ("data loader, rotate/crop/flip", True, "loader", "augmented in the loader, image by image"),
        ("data loader, no augmentation", False, "loader", "evaluation squares copied as they are"),
        ("data loader, for augmentation on the GPU", True, "device", "larger squares handed over as they are"),
    )
    # Ours first, preparation (scan, split, caches) before anything of it is timed.
    ours_calls = [
        (our_pipeline.prepare_only, (settings,)),
        *((our_pipeline.our_loader, (settings, augment, place)) for _, augment, place, _ in loaders),
        *_device_augmentation_calls(setup),
        (our_pipeline.our_training, (settings,)),
        (our_pipeline.our_evaluation, (settings,)),
        (our_pipeline.our_epochs, (settings, 2 if cfg.tiny else cfg.head_epochs, True)),
    ]
    prepared, *ours_loaders, loop, batched, ours_training, ours_evaluation, head_only = each_in_a_fresh_fork(ours_calls)
    log.info("prepared in %.1f s; timing %s", prepared["seconds"], photos)
    # The plain pipeline has one way to augment: in its loader.
    plain_loaders = {
        augment: in_fresh_process(plain_pipeline.plain_loader, settings, augment) for augment in (True, False)
    }
    rows = []
    for (label, augment, _, how), ours in zip(loaders, ours_loaders, strict=True):
        note = f"plain: ImageFolder decoding every photo; ours: uint8 array cache, {how}, {ours['workers']} process(es)"
        rows.append(_rates(label, plain_loaders[augment], ours, note))
    rows.append(_device_augmentation_row(setup, loop, batched))
    note = f"ResNet-18, Adam; ours: {ours_training['precision']}, channels_last={ours_training['channels_last']}"
    rows.append(_rates("training", in_fresh_process(plain_pipeline.plain_training, settings), ours_training, note))
    plain_eval = in_fresh_process(plain_pipeline.plain_evaluation, settings)
    rows.append(_rates("evaluation", plain_eval, ours_evaluation))
    rows.append(_head_only_row(head_only, plain_eval))
    if cfg.device != "cpu" and torch.cuda.is_available():
        rows += _cuda_rows(setup)
    context = {
        "photos": str(photos),
        "image_size": setup.image_size,
        "batch_size": setup.batch_size,
        "num_workers": setup.num_workers,
        "cpu_threads": torch.get_num_threads(),
        "preparation_seconds": prepared["seconds"],
        "tiny": bool(cfg.tiny),
    }
    _report(rows, context, run_dir)
    return rows


def _figure(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f} s" if unit == "s" else f"{value:,.1f}"


def _cells(row: Row) -> list[str]:
    memory = " / ".join("-" if mb is None else f"{mb:,.0f}" for mb in (row.plain_mb, row.ours_mb))
    speedup = "-" if row.speedup is None else f"{row.speedup:.1f}x"
    unit = "" if row.unit == "s" else f" {row.unit}"
    return [row.measure + unit, _figure(row.plain, row.unit), _figure(row.ours, row.unit), speedup, memory, row.note]


HEADER = ["measure", "report's plain pipeline", "gem-lightning", "speed-up", "peak MB plain / ours", "how"]


def _report(rows: list[Row], context: dict, run_dir: Path) -> None:
    title = (
        f"{context['photos']}: {context['image_size']} px, batch {context['batch_size']}, "
        f"{context['num_workers']} loader process(es), {context['cpu_threads']} CPU threads"
    )
    table = Table(title=title)
    for column in HEADER:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*_cells(row))
    Console().print(table)
    lines = [f"# gem-lightning bench\n\n{title}; preparation {context['preparation_seconds']:.1f} s.\n"]
    lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    write_text_atomically(run_dir / "bench.md", "\n".join(lines) + "\n")
    document = {**context, "rows": [{**row.__dict__, "speedup": row.speedup} for row in rows]}
    write_text_atomically(run_dir / "bench.json", json.dumps(document, indent=1))
    print(f"wrote {run_dir / 'bench.md'}")
