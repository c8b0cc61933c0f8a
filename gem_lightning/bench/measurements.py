"""What ``gem_lightning.bench.suite`` times, each call in a fresh process: the report's plain PyTorch pipeline
and ours, on the same photos, backbone, resolution and batch size.
"""

# The plain side is the student report's recipe as such a script is written: torchvision ``ImageFolder`` on
# the raw photos (each JPEG decoded every epoch), rotate/crop/flip with the classic transforms, float32,
# Adam at 3e-4, glibc's default allocator. Ours is the project's real path: the Hydra-composed data module
# (uint8 array cache, transforms v2), the LightningModule under a Lightning Trainer with the configured
# precision and memory format, and the allocator setting of the entry points.
#
# Every function takes a plain dict (``Setup``'s fields) and returns a dict of figures with the process's
# peak resident memory, so one process's caches or allocator state never colour another's figure.

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from gem_lightning.models.backbones import IMAGENET_MEAN, IMAGENET_STD

REPORT_LR = 3e-4


@dataclass
class Setup:
    """Everything a measurement needs, picklable for the spawned process."""

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


def _memory(device: str) -> dict:
    """Peak memory of this process: resident (MB), and on CUDA the most the GPU held in tensors (MB)."""
    figures = {"peak_mb": peak_memory_mb()}
    if device.startswith("cuda"):
        figures["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return figures


class _Clock:
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


# -- the report's plain pipeline ------------------------------------------------------------------------


def _plain_loader(setup: Setup, augment: bool, shuffle: bool = True) -> DataLoader:
    from torchvision import datasets
    from torchvision import transforms as T

    size = setup.image_size
    if augment:  # the report's policy: rotate, random crop, flip
        steps = [T.RandomRotation(30), T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(size), T.CenterCrop(size)]
    transform = T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return DataLoader(
        datasets.ImageFolder(setup.photos, transform),
        batch_size=setup.batch_size,
        shuffle=shuffle,
        num_workers=setup.num_workers,
        pin_memory=setup.device.startswith("cuda"),
        drop_last=True,
    )


def _time_loader(loader: DataLoader, setup: Setup) -> dict:
    clock = _Clock(setup.warmup_batches)
    total = setup.warmup_batches + setup.loader_batches
    for index, batch in enumerate(_cycle(loader, total)):
        clock.batch_done(index, len(batch[0]))
    return {"images_per_second": clock.rate, "peak_mb": peak_memory_mb()}


def _cycle(loader: DataLoader, batches: int):
    """``batches`` batches, starting the loader over when a small folder runs out."""
    served = 0
    while served < batches:
        for batch in loader:
            yield batch
            served += 1
            if served == batches:
                return


def plain_loader(settings: dict, augment: bool) -> dict:
    setup = Setup(**settings)
    return _time_loader(_plain_loader(setup, augment), setup)


def _plain_network(setup: Setup, classes: int) -> torch.nn.Module:
    from torchvision import models

    # ImageNet weights or not, a step costs the same; offline runs cannot fetch them anyway.
    return models.resnet18(num_classes=classes).to(setup.device)


def plain_training(settings: dict) -> dict:
    setup = Setup(**settings)
    loader = _plain_loader(setup, augment=True)
    network = _plain_network(setup, len(loader.dataset.classes)).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=REPORT_LR)
    clock = _Clock(setup.warmup_batches, setup.device)
    for index, (images, targets) in enumerate(_cycle(loader, setup.warmup_batches + setup.timed_batches)):
        images, targets = images.to(setup.device), targets.to(setup.device)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(network(images), targets)
        loss.backward()
        optimizer.step()
        clock.batch_done(index, len(images))
    return {"images_per_second": clock.rate, **_memory(setup.device)}


def plain_evaluation(settings: dict) -> dict:
    setup = Setup(**settings)
    loader = _plain_loader(setup, augment=False, shuffle=False)
    network = _plain_network(setup, len(loader.dataset.classes)).eval()
    clock = _Clock(setup.warmup_batches, setup.device)
    with torch.no_grad():
        for index, (images, _) in enumerate(_cycle(loader, setup.warmup_batches + setup.timed_batches)):
            network(images.to(setup.device))
            clock.batch_done(index, len(images))
    return {"images_per_second": clock.rate, **_memory(setup.device)}


# -- ours ----------------------------------------------------------------------------------------------


def _ours(setup: Setup, extra: list[str] = ()):
    """(config, prepared data module) as train.py would build them."""
    import hydra

    from gem_lightning.config.composition import DEFAULT_CONFIG_DIR, compose_train_config
    from gem_lightning.machine.memory_allocator import keep_freed_memory

    keep_freed_memory()
    trainer = "trainer=gpu" if setup.device.startswith("cuda") else "trainer=cpu"
    cfg = compose_train_config(DEFAULT_CONFIG_DIR, [*setup.overrides, trainer, *extra])
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    return cfg, datamodule


def prepare_only(settings: dict) -> dict:
    """Scan, split and fill the caches, so that no timed measurement pays for first-time preparation."""
    _ours(Setup(**settings))
    return {"peak_mb": peak_memory_mb()}


def _our_model(cfg, datamodule):
    import hydra

    return hydra.utils.instantiate(
        cfg.model,
        class_names=list(datamodule.class_names),
        image_size=cfg.data.image_size,
        augment_policy=cfg.augment.name,
        optimizer=hydra.utils.instantiate(cfg.optim),
        scheduler=None,
    )


def _our_trainer(cfg, callbacks: list, **settings):
    from omegaconf import OmegaConf

    from gem_lightning.training.trainer_factory import build_trainer

    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.update(enable_progress_bar=False, enable_model_summary=False, **settings)
    return build_trainer(trainer_cfg, callbacks=callbacks, logger=False, enable_checkpointing=False)


def our_loader(settings: dict, augment: bool, place: str = "loader") -> dict:
    """Our training loader; with ``place="device"`` it hands over stored squares for the device to augment."""
    setup = Setup(**settings)
    _, datamodule = _ours(setup, [*([] if augment else ["augment=none"]), f"data.augment_on={place}"])
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    return {**_time_loader(loader, setup), "workers": loader.num_workers}


def _batch_clock(setup: Setup, stage: str):
    from lightning.pytorch.callbacks import Callback

    clock = _Clock(setup.warmup_batches, setup.device)

    class BatchClock(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if stage == "train":
                clock.batch_done(batch_idx, len(batch[0]))

        def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
            if stage == "validate":
                clock.batch_done(batch_idx, len(batch[0]))

    return clock, BatchClock()


def our_training(settings: dict) -> dict:
    setup = Setup(**settings)
    cfg, datamodule = _ours(setup)
    model = _our_model(cfg, datamodule)
    clock, callback = _batch_clock(setup, "train")
    batches = setup.warmup_batches + setup.timed_batches
    trainer = _our_trainer(
        cfg, [callback], max_epochs=1, limit_train_batches=batches, limit_val_batches=0, num_sanity_val_steps=0
    )
    trainer.fit(model, datamodule=datamodule)
    return {
        "images_per_second": clock.rate,
        **_memory(setup.device),
        "precision": str(trainer.precision),
        "channels_last": bool(cfg.model.channels_last),
    }


def our_evaluation(settings: dict) -> dict:
    setup = Setup(**settings)
    cfg, datamodule = _ours(setup)
    model = _our_model(cfg, datamodule)
    clock, callback = _batch_clock(setup, "validate")
    trainer = _our_trainer(cfg, [callback], limit_val_batches=setup.warmup_batches + setup.timed_batches)
    trainer.validate(model, datamodule=datamodule, verbose=False)
    return {"images_per_second": clock.rate, **_memory(setup.device)}


def our_epochs(settings: dict, epochs: int, head_only: bool) -> dict:
    """Whole training epochs (validation off): seconds of each, the time before the first (preparing
    loaders; for head_only, computing or reading the features), and whether features were computed."""
    from lightning.pytorch.callbacks import Callback

    setup = Setup(**settings)
    # Head-only training sees fixed features of unaugmented images; say so in the config, not in a warning.
    cfg, datamodule = _ours(setup, ["model.head_only=true", "augment=none"] if head_only else [])
    model = _our_model(cfg, datamodule)
    features_dir = Path(cfg.paths.cache_dir) / "features"
    before = set(features_dir.glob("*.npy"))
    sync = torch.cuda.synchronize if setup.device.startswith("cuda") else (lambda: None)
    marks: dict = {"epochs": []}

    class EpochClock(Callback):
        def on_fit_start(self, trainer, module):
            marks["fit_start"] = time.perf_counter()

        def on_train_epoch_start(self, trainer, module):
            sync()
            marks["epoch_start"] = time.perf_counter()
            marks.setdefault("first_epoch", marks["epoch_start"])

        def on_train_epoch_end(self, trainer, module):
            sync()
            marks["epochs"].append(time.perf_counter() - marks["epoch_start"])

    trainer = _our_trainer(cfg, [EpochClock()], max_epochs=epochs, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=datamodule)
    return {
        "epoch_seconds": marks["epochs"],
        "before_first_epoch_seconds": marks["first_epoch"] - marks["fit_start"],
        "features_computed": bool(set(features_dir.glob("*.npy")) - before),
        "train_images": len(datamodule.datasets["train"]),
        **_memory(setup.device),
        "precision": str(trainer.precision),
    }
