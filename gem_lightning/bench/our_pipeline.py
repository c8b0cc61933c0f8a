"""Our pipeline, timed: the Hydra-composed data module (uint8 array cache, transforms v2) and the
LightningModule under a Lightning Trainer with the configured precision, as train.py builds them. Each function
runs in a fresh process (``fresh_processes``)."""

# Every function takes a plain dict (``Setup``'s fields) and returns a dict of figures with the process's
# peak resident memory, so one process's caches or allocator state never colour another's figure.

from __future__ import annotations

import time
from pathlib import Path

import torch

from gem_lightning.bench.timing import Clock, Setup, cycle, memory, peak_memory_mb, time_loader


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
    """Scan, split and fill the caches, so that no timed measurement pays for first-time preparation; the
    seconds it took (composing the config included)."""
    started = time.perf_counter()
    _ours(Setup(**settings))
    return {"seconds": time.perf_counter() - started, "peak_mb": peak_memory_mb()}


def _our_model(cfg, datamodule):
    import hydra

    return hydra.utils.instantiate(cfg.model, class_names=list(datamodule.class_names))


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
    return {**time_loader(loader, setup), "workers": loader.num_workers}


def device_augmentation(settings: dict, batched: bool) -> dict:
    """Augmenting training batches of stored squares where the model runs (``data.augment_on=device``): the
    policy as whole-batch operations (``BatchAugmentation``), or image by image in a Python loop, as before."""
    from gem_lightning.data.batch_augmentation import BatchAugmentation

    setup = Setup(**settings)
    _, datamodule = _ours(setup, ["data.augment_on=device"])
    datamodule.setup("fit")
    policy = datamodule.train_transform
    augment = BatchAugmentation(policy) if batched else lambda batch: torch.stack([policy(image) for image in batch])
    total = setup.warmup_batches + setup.loader_batches
    batches = [batch[0].to(setup.device) for batch in cycle(datamodule.train_dataloader(), total)]
    clock = Clock(setup.warmup_batches, setup.device)
    for index, batch in enumerate(batches):
        augment(batch)
        clock.batch_done(index, len(batch))
    return {"images_per_second": clock.rate, **memory(setup.device)}


def _batch_clock(setup: Setup, stage: str):
    from lightning.pytorch.callbacks import Callback

    clock = Clock(setup.warmup_batches, setup.device)

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
        **memory(setup.device),
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
    return {"images_per_second": clock.rate, **memory(setup.device)}


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
        **memory(setup.device),
        "precision": str(trainer.precision),
    }
