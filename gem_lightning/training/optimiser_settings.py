"""Check the ``optim/`` and ``scheduler/`` settings before a run prepares any data."""

# Their schema is the one torch already has: the keys a config may set are the parameters of its
# ``_target_`` (``torch.optim.Adam``'s ``lr``, ``betas``, ``weight_decay``, ...), and the valid values are what
# that class accepts when it is built. Both are checked by building the optimiser on one dummy parameter and
# the scheduler on that optimiser, so ``optim.lr=-1`` or ``+optim.lrr=1`` is one line naming the key within
# seconds of composing, not a traceback after minutes of data preparation, and any optimiser a user
# configures is checked by its own rules.

from __future__ import annotations

import inspect
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from gem_lightning.errors import GemLightningError
from gem_lightning.models.lr_schedules import STEP_SCHEDULE_ARGUMENT, steps_per_batch

# Hydra's own keys, and the arguments the model passes at call time rather than the config.
_NOT_SETTINGS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
_PASSED_BY_THE_MODEL = {"params", "optimizer", STEP_SCHEDULE_ARGUMENT}


def _settings(node: DictConfig) -> dict[str, Any]:
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in _NOT_SETTINGS}


def _check_keys(group: str, node: DictConfig) -> None:
    target = hydra.utils.get_object(node._target_)
    parameters = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return  # takes any keyword: nothing to compare against
    valid = [name for name in parameters if name not in _PASSED_BY_THE_MODEL]
    for key in _settings(node):
        if key not in parameters:
            raise GemLightningError(
                f"{group}.{key} is not a setting of {node._target_}; its settings are: {', '.join(valid)}"
            )


def _described(group: str, node: DictConfig) -> str:
    values = ", ".join(f"{group}.{key}={value}" for key, value in _settings(node).items())
    return f"{node._target_} ({values})"


def check_optimiser_settings(optim: DictConfig, scheduler: DictConfig | None) -> None:
    """Raise one GemLightningError if ``optim`` or ``scheduler`` has an unknown key or a value torch refuses."""
    _check_keys("optim", optim)
    try:
        optimizer = hydra.utils.instantiate(optim)(params=[torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as error:
        raise GemLightningError(f"optim: {_described('optim', optim)} refuses its settings: {error}") from None
    if not scheduler or "_target_" not in scheduler:
        return
    _check_keys("scheduler", scheduler)
    try:
        factory = hydra.utils.instantiate(scheduler)
        # A per-step schedule is checked over a run of any length; the model passes the real one.
        factory(optimizer=optimizer, **({STEP_SCHEDULE_ARGUMENT: 100} if steps_per_batch(factory) else {}))
    except (ValueError, TypeError) as error:
        raise GemLightningError(
            f"scheduler: {_described('scheduler', scheduler)} refuses its settings: {error}"
        ) from None
