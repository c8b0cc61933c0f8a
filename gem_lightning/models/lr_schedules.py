"""Learning-rate schedules that are stepped once per optimiser step and need the run's length.

``GemClassifier.configure_optimizers`` gives a scheduler factory ``total_steps`` (Lightning's
``trainer.estimated_stepping_batches``) when the factory takes that argument, and then steps it per batch;
factories without it (torch's ``CosineAnnealingLR`` over ``${trainer.max_epochs}``) are stepped per epoch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

STEP_SCHEDULE_ARGUMENT = "total_steps"


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float = 0.05, min_lr: float = 1.0e-6
) -> LRScheduler:
    """Linear warm-up from 1 % of each group's learning rate over ``warmup_fraction`` of the steps, then cosine
    decay to ``min_lr``: the usual fine-tuning schedule (a new head's first gradients do not wreck the features)."""
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    warmup_steps = max(1, round(total_steps * warmup_fraction))
    warmup = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup_steps)
    decay = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps), eta_min=min_lr)
    return SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])


def steps_per_batch(factory: Callable[..., Any]) -> bool:
    """Whether scheduler ``factory`` (a Hydra partial or any callable) wants ``total_steps`` and per-step calls."""
    target = getattr(factory, "func", factory)
    try:
        return STEP_SCHEDULE_ARGUMENT in inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a signature: an epoch schedule
        return False
