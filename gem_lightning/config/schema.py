"""Typed schemas for the config groups whose values users type most: Hydra checks them while composing."""

# A typo'd key (``data.batchsize=32``) or a bad value (``data.split=random``, ``data.batch_size=abc``,
# ``model.backbone=resnet101``) then fails with Hydra's own message before any run folder is made, instead
# of half-way into a run. The YAML files in ``conf/data`` and ``conf/model`` list ``/schema/<group>/typed`` first in
# their defaults; ``register_config_schemas()`` must run before composing (train.py, ``compose_config`` and the tests
# do). It also registers ``${project_root:}``, the folder that ``conf/paths`` puts data, caches and outputs in.

from __future__ import annotations

import functools
import inspect
from dataclasses import field, make_dataclass
from enum import Enum
from typing import Any, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from gem_lightning.config.project_folder import PROJECT_ROOT

# The schemas are read off the data module's and the classifier's signatures, which means importing Lightning
# and torch; they are built on first use (``register_config_schemas``, or ``DataSchema`` and the others read as
# this module's attributes), so that importing this module, as every entry point does, stays cheap: a worker
# process spawned by an entry point imports that entry point again (``tests/machine/test_spawned_workers.py``).
SCHEMA_NAMES = ("BackboneName", "DataSchema", "ModelSchema")

# Types Hydra can check as they are; a richer annotation (a callable, a union with str) is typed Any.
_PLAIN_TYPES = {int, float, bool, str} | {kind | None for kind in (int, float, bool, str)}


def schema_of(name: str, built: type, choices: dict[str, type[Enum]]) -> type:
    """A dataclass ``name`` (Hydra's errors say it): ``_target_`` and ``built``'s keyword-only parameters, required.

    The signature is the one list of keys: a parameter added there is a key Hydra knows. Each field has its
    annotation where Hydra can check it, the Enum in ``choices`` where a string must be one of a list, else Any.
    No field has a default: the group's YAML holds every value.
    """
    hints = get_type_hints(built.__init__)
    keys = [p.name for p in inspect.signature(built.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY]
    typed = [(key, choices.get(key, hints[key] if hints[key] in _PLAIN_TYPES else Any)) for key in keys]
    fields = [(key, kind, field(default=MISSING)) for key, kind in [("_target_", str), *typed]]
    return make_dataclass(name, fields)


@functools.cache
def _schemas() -> dict[str, type]:
    from gem_lightning.data.datamodule import GemDataModule
    from gem_lightning.data.splits import ConflictPolicy, SplitMode
    from gem_lightning.machine.auto_settings import AugmentPlace
    from gem_lightning.models.backbones import BACKBONE_NAMES
    from gem_lightning.models.classifier import GemClassifier
    from gem_lightning.models.white_balance import WhiteBalance

    # Each list of choices is kept where its rule lives; Hydra checks the keys against them.
    backbone_name = Enum("BackboneName", {name: name for name in BACKBONE_NAMES}, type=str, module=__name__)
    # conf/data/gemstones.yaml and conf/model/resnet18.yaml (which the other backbones extend) hold the values.
    data = schema_of(
        "DataSchema", GemDataModule, {"split": SplitMode, "label_conflicts": ConflictPolicy, "augment_on": AugmentPlace}
    )
    model = schema_of("ModelSchema", GemClassifier, {"backbone": backbone_name, "white_balance": WhiteBalance})
    return dict(zip(SCHEMA_NAMES, (backbone_name, data, model), strict=True))


def __getattr__(name: str) -> type:
    """``BackboneName``, ``DataSchema`` and ``ModelSchema``, built on first use."""
    if name in SCHEMA_NAMES:
        return _schemas()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_config_schemas() -> None:
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    store = ConfigStore.instance()
    schemas = _schemas()
    # In groups of their own, so `train.py --help` does not offer "schema" as a choice of data/ or model/.
    store.store(group="schema/data", name="typed", node=schemas["DataSchema"])
    store.store(group="schema/model", name="typed", node=schemas["ModelSchema"])
