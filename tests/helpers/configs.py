"""The real Hydra config, composed as train.py would and shrunk for a 2-core CPU."""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig

from gem_lightning.config.composition import compose_train_config
from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.models.classifier import GemClassifier
from tests.helpers.workplace import CONFIG_DIR

# A demo run small enough for a 2-core CPU: 10 classes x 12 images of 48 px, trained at 32 px.
TINY_DEMO = [
    "experiment=demo",
    "data.demo.images_per_class=12",
    "data.demo.image_size=48",
    "data.image_size=32",
    "data.batch_size=16",
    "data.num_workers=0",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "~callbacks.rich_progress_bar",
]


def compose_config(overrides: list[str], workdir: Path, cache_dir: Path | None = None) -> DictConfig:
    """The config train.py would get for ``overrides``, with every path inside ``workdir`` (the cache in
    ``cache_dir`` where given)."""
    paths = [
        f"paths.root_dir={workdir}",
        f"paths.output_dir={workdir / 'run'}",
        f"paths.cache_dir={cache_dir or workdir / 'cache'}",
        f"paths.log_dir={workdir / 'outputs'}",
    ]
    return compose_train_config(CONFIG_DIR, [*overrides, *paths])


def folder_datamodule(root: Path, workdir: Path, overrides: list[str] = ()) -> GemDataModule:
    """The data module train.py would build for the folder ``root`` (cache in ``workdir``/cache), shrunk:
    16 px squares, batches of 4, no loader processes, no augmentation."""
    shrunk = [f"data.root={root}", "data.image_size=16", "data.batch_size=4", "data.num_workers=0", "augment=none"]
    return hydra.utils.instantiate(compose_config([*shrunk, *overrides], workdir).data)


def composed_model(class_names: list[str], workdir: Path, overrides: list[str] = ()) -> GemClassifier:
    """The model train.py would build for ``class_names``, without pretrained weights: ResNet-18 unless
    ``overrides`` say otherwise."""
    cfg = compose_config(["model.pretrained=false", *overrides], workdir)
    return hydra.utils.instantiate(cfg.model, class_names=list(class_names))


def bare_trainer(root_dir: Path, **settings) -> pl.Trainer:
    """A one-process CPU Trainer with no logger, checkpoints, progress bar or summary (``settings`` change any),
    for tests that fit the classifier directly."""
    plain = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root_dir,
    )
    return pl.Trainer(**{**plain, **settings})
