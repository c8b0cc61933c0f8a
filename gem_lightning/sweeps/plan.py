"""What a sweep is, resolved from the composed config: study, storage, budget, space, sampler, pruner.

``python sweep.py sweep=<name> <train.py overrides>`` composes train.yaml with the ``sweep`` group chosen
(``conf/sweep/<name>.yaml``, its pruner from ``conf/sweep/pruner/``); this module turns that ``sweep`` node
into a plain object that the workers and the results share.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import optuna
from omegaconf import DictConfig, OmegaConf
from sqlalchemy.engine import URL

from gem_lightning.choices import checked_choice
from gem_lightning.errors import GemLightningError
from gem_lightning.sweeps.search_space import SearchSpace, override_key, override_keys
from gem_lightning.sweeps.storage import storage_url

log = logging.getLogger(__name__)

STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Overrides that may differ between the workers of one study: where files go, how this machine loads data,
# which devices it trains on and what it prints. Anything else changes what a trial measures.
PER_MACHINE_KEYS = (
    *("paths", "hydra", "data.num_workers", "data.pin_memory"),
    *("trainer.gpus", "trainer.devices", "trainer.accelerator", "trainer.enable_progress_bar"),
    "trainer.enable_model_summary",
)
KEEP_CHECKPOINTS = ("best", "all")


@dataclass
class SweepPlan:
    study_name: str
    sweep_dir: Path
    storage: URL
    n_trials: int
    direction: str
    metric: str
    prune_on: str
    space: SearchSpace
    # train.py overrides every trial gets (the command line's), and those only trials get (not the best config).
    base_overrides: list[str]
    trial_overrides: list[str]
    sampler: DictConfig
    pruner: DictConfig
    keep_checkpoints: str
    heartbeat_interval: int
    grace_period: int
    max_retry: int
    config_dir: Path

    @classmethod
    def from_config(cls, cfg: DictConfig, base_overrides: list[str], config_dir: Path) -> SweepPlan:
        sweep = cfg.sweep
        if not STUDY_NAME.match(str(sweep.study_name)):
            raise GemLightningError(
                f"sweep.study_name={sweep.study_name!r}: use letters, digits, '_', '.' and '-' (it names a folder)"
            )
        checked_choice(sweep.direction, ("maximize", "minimize"), "sweep.direction")
        checked_choice(sweep.keep_checkpoints, KEEP_CHECKPOINTS, "sweep.keep_checkpoints")
        if int(sweep.n_trials) < 1:
            raise GemLightningError(f"sweep.n_trials={sweep.n_trials}: ask for at least one trial")
        space = SearchSpace.from_params(OmegaConf.to_container(sweep.params, resolve=True))
        # What the command line sets is not searched: `python sweep.py augment=seed` keeps augment fixed.
        pinned = override_keys(base_overrides) & (set(space.distributions) | set(space.fixed))
        if pinned:
            log.info("fixed by the command line, not searched: %s", ", ".join(sorted(pinned)))
            space = space.without(pinned)
            if not space.distributions:
                raise GemLightningError("the command line fixes every searched key: nothing is left to search")
        sweep_dir = Path(sweep.dir)
        return cls(
            study_name=str(sweep.study_name),
            sweep_dir=sweep_dir,
            storage=storage_url(sweep.storage, sweep_dir),
            n_trials=int(sweep.n_trials),
            direction=str(sweep.direction),
            metric=str(sweep.metric),
            prune_on=str(sweep.prune_on),
            space=space,
            base_overrides=list(base_overrides),
            trial_overrides=[str(o) for o in sweep.trial_overrides],
            sampler=sweep.sampler,
            pruner=sweep.pruner,
            keep_checkpoints=str(sweep.keep_checkpoints),
            heartbeat_interval=int(sweep.heartbeat_interval),
            grace_period=int(sweep.grace_period),
            max_retry=int(sweep.max_retry),
            config_dir=Path(config_dir),
        )

    def identity(self) -> dict[str, Any]:
        """What a resumed study must share with its start (see study_storage.load_study)."""
        comparable = [o for o in self.base_overrides if not _per_machine(override_key(o))]
        return {
            "overrides": sorted(comparable),
            "space": self.space.describe(),
            "fixed": {k: str(v) for k, v in sorted(self.space.fixed.items())},
            "metric": self.metric,
            "direction": self.direction,
        }

    def make_sampler(self, trials_so_far: int) -> optuna.samplers.BaseSampler:
        """A sampler seeded with ``seed + trials so far``: a seeded sweep repeats, yet two workers asking at
        once never draw from the same random stream (with one seed they would propose the same trials)."""
        seed = self.sampler.get("seed")
        if seed is None:
            return hydra.utils.instantiate(self.sampler)
        return hydra.utils.instantiate(self.sampler, seed=int(seed) + trials_so_far)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        return hydra.utils.instantiate(self.pruner)

    def trial_dir(self, number: int) -> Path:
        return self.sweep_dir / "trials" / f"{number:04d}"


def _per_machine(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") or key.startswith(f"{k}/") for k in PER_MACHINE_KEYS)
