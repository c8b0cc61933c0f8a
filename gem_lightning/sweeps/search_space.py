"""A sweep's search space: written in Hydra's sweep syntax, sampled as Optuna distributions, applied as overrides."""

# ``conf/sweep/*.yaml`` list it under ``params``, one train.py key (or config group) per line, as users of
# hydra-optuna-sweeper and lightning-hydra-template write it:
#
#     optim.lr: tag(log, interval(1e-5, 3e-3))        FloatDistribution(1e-5, 3e-3, log=True)
#     model.label_smoothing: interval(0.0, 0.2)       FloatDistribution(0.0, 0.2)
#     model.freeze_backbone_epochs: int(interval(0, 2))   IntDistribution(0, 2)
#     data.batch_size: range(16, 65, 16)              IntDistribution(16, 64, step=16)
#     data.batch_size: choice(16, 32, 48, 64)         CategoricalDistribution
#     augment: choice(seed, colour_preserving)        a config group, sampled by option name
#
# A plain value (``trainer.max_epochs: 10``) is applied to every trial without being searched. Hydra's own
# override parser reads the expressions, so the syntax and its errors are Hydra's.

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import HydraException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from gem_lightning.errors import GemLightningError

KNOWN_TAGS = {"log"}


def _distribution(name: str, sweep: Any) -> BaseDistribution:
    unknown = set(sweep.tags) - KNOWN_TAGS
    if unknown:
        raise GemLightningError(f"sweep.params.{name}: unknown tag(s) {sorted(unknown)}; only tag(log, ...) is read")
    log = "log" in sweep.tags
    if isinstance(sweep, ChoiceSweep):
        if log:
            raise GemLightningError(f"sweep.params.{name}: tag(log, ...) needs interval(...) or range(...), not choice")
        return CategoricalDistribution(list(sweep.list))
    if isinstance(sweep, IntervalSweep):
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    if isinstance(sweep, RangeSweep):
        values = (sweep.start, sweep.stop, sweep.step)
        if not all(isinstance(v, int) for v in values) or sweep.step <= 0:
            raise GemLightningError(f"sweep.params.{name}: range(start, stop, step) needs whole numbers, step > 0")
        # Hydra's range excludes stop, like Python's; Optuna's bounds are inclusive.
        last = sweep.start + sweep.step * math.ceil((sweep.stop - sweep.start) / sweep.step - 1)
        return IntDistribution(sweep.start, last, step=sweep.step, log=log)
    raise GemLightningError(f"sweep.params.{name}: use choice(...), interval(...), range(...) or a plain value")


def override_value(value: Any) -> str:
    """``value`` as Hydra reads it back on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if any(c in text for c in " ,=()[]{}'\"\\:$"):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


@dataclass(frozen=True)
class SearchSpace:
    """What each trial samples (``distributions``) and what it gets unsampled (``fixed``), by train.py key."""

    distributions: dict[str, BaseDistribution]
    fixed: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SearchSpace:
        parser = OverridesParser.create()
        distributions, fixed = {}, {}
        for name, expression in params.items():
            if isinstance(expression, (list, tuple)):  # a YAML list reads as choice(...)
                distributions[name] = CategoricalDistribution(list(expression))
                continue
            if not isinstance(expression, str):
                fixed[name] = expression
                continue
            try:
                override = parser.parse_override(f"{name}={expression}")
            except HydraException as error:
                message = f"sweep.params.{name}: {expression!r} is not a Hydra sweep expression: {error}"
                raise GemLightningError(message) from None
            if override.is_sweep_override():
                distributions[name] = _distribution(name, override.value())
            else:
                fixed[name] = override.value()
        if not distributions:
            raise GemLightningError("sweep.params has nothing to search: give at least one choice/interval/range")
        return cls(distributions, fixed)

    def without(self, names: Iterable[str]) -> SearchSpace:
        """The space with ``names`` taken out (the command line fixed them)."""
        names = set(names)
        return SearchSpace(
            {k: v for k, v in self.distributions.items() if k not in names},
            {k: v for k, v in self.fixed.items() if k not in names},
        )

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """One value per dimension; a trial enqueued or retried with its parameters gets those back."""
        values = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                values[name] = trial.suggest_categorical(name, dist.choices)
            elif isinstance(dist, IntDistribution):
                values[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                values[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
        return values

    def describe(self) -> dict[str, str]:
        """A stable text form, stored with the study so that a resumed sweep can be checked against it."""
        return {name: repr(dist) for name, dist in sorted(self.distributions.items())}


def as_overrides(values: Mapping[str, Any]) -> list[str]:
    return [f"{name}={override_value(value)}" for name, value in values.items()]


def override_key(text: str) -> str:
    """The key (or config group) a command-line override sets: ``augment=seed`` sets ``augment``."""
    return OverridesParser.create().parse_override(text).key_or_group


def override_keys(overrides: Iterable[str]) -> set[str]:
    return {override_key(text) for text in overrides}
