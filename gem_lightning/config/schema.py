"""Typed schemas for the config groups whose values users type most: Hydra checks them while composing."""

# A typo'd key (``data.batchsize=32``) or a bad value (``data.split=random``, ``data.batch_size=abc``,
# ``model.backbone=resnet101``) then fails with Hydra's own message before any run folder is made, instead
# of half-way into a run. The YAML files in ``conf/data`` and ``conf/model`` list ``/schema/<group>/typed`` first in
# their defaults; ``register_config_schemas()`` must run before composing (train.py, ``compose_config`` and the tests
# do). It also registers ``${project_root:}``, the folder that ``conf/paths`` puts data, caches and outputs in.

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from gem_lightning.data.splits import ConflictPolicy, SplitMode
from gem_lightning.machine.auto_settings import AugmentPlace
from gem_lightning.models.backbones import BACKBONE_NAMES

# The project folder: the one holding conf/, train.py and this package (a clone, installed editable). Not the
# working directory: Hydra resolves the multirun folder before it knows that (`${hydra:runtime.cwd}` fails
# there), and a run started from another folder must still find data/, cache/ and outputs/.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


# Each list of choices is kept where its rule lives; Hydra checks the keys against them.
BackboneName = Enum("BackboneName", {name: name for name in BACKBONE_NAMES}, type=str)


@dataclass
class DataSchema:
    # Types only: conf/data/gemstones.yaml holds every value (the one place a default is kept), and
    # GemDataModule takes each key without a default, so a key the YAML lacks fails at composition.
    _target_: str = MISSING
    root: str = MISSING
    cache_dir: str = MISSING
    split: SplitMode = MISSING
    val_fraction: float = MISSING
    test_fraction: float = MISSING
    split_seed: int = MISSING
    image_size: int = MISSING
    batch_size: int = MISSING
    num_workers: Any = MISSING  # a whole number or "auto"
    pin_memory: Any = MISSING  # true, false or "auto"
    max_image_pixels: int = MISSING
    max_classes: int | None = MISSING
    min_images_per_class: int = MISSING
    train_transform: Any = MISSING
    augment_policy: str = MISSING
    demo: Any = MISSING
    background: Any = MISSING
    background_swap: Any = MISSING
    near_duplicate_threshold: float | None = MISSING
    label_conflicts: ConflictPolicy = MISSING
    cache_images: bool = MISSING
    augment_on: AugmentPlace = MISSING


@dataclass
class ModelSchema:
    # Types only, as DataSchema: conf/model/resnet18.yaml (which the other backbones extend) holds the values.
    _target_: str = MISSING
    backbone: BackboneName = MISSING
    pretrained: bool = MISSING
    allow_download: bool = MISSING
    label_smoothing: float = MISSING
    dropout: float = MISSING
    backbone_lr_scale: float = MISSING
    mixup_alpha: float = MISSING
    cutmix_alpha: float = MISSING
    freeze_backbone_epochs: int = MISSING
    frozen_stages: int = MISSING
    head_only: bool = MISSING
    channels_last: bool = MISSING
    compile: bool = MISSING
    image_size: int = MISSING
    augment_policy: str = MISSING
    optimizer: Any = MISSING  # a _partial_ optimiser node (conf/optim/)
    scheduler: Any = MISSING  # a _partial_ schedule node (conf/scheduler/); empty for none


def register_config_schemas() -> None:
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    store = ConfigStore.instance()
    # In groups of their own, so `train.py --help` does not offer "schema" as a choice of data/ or model/.
    store.store(group="schema/data", name="typed", node=DataSchema)
    store.store(group="schema/model", name="typed", node=ModelSchema)
