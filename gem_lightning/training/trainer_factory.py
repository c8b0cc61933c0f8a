"""Build the Lightning Trainer from its config, accepting ``trainer.gpus`` as users still type it; every Trainer
built here serves a head-only model its cached features (``HeadOnlyFeatures``)."""

# Lightning 2 removed ``Trainer(gpus=...)``; the student report and many tutorials use it, so ``gpus`` is
# kept as an alias: ``0`` means the CPU, ``N`` means N GPUs, ``-1`` all of them, ``"0,2"`` those indices.
#
# ``precision: auto`` (the default) picks the fastest precision the chosen device runs natively; see
# ``auto_settings.automatic_precision``.

from __future__ import annotations

from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from gem_lightning.errors import GemLightningError
from gem_lightning.machine import auto_settings
from gem_lightning.training.head_only_features import HeadOnlyFeatures


def _gpus_to_devices(gpus: Any) -> tuple[str, Any]:
    if isinstance(gpus, str):
        parts = [p.strip() for p in gpus.split(",") if p.strip()]
        try:
            indices = [int(p) for p in parts]
        except ValueError:
            raise GemLightningError(f"trainer.gpus={gpus!r}: use a number of GPUs or indices like '0,1'") from None
        if len(indices) == 1 and "," not in gpus:
            return _gpus_to_devices(indices[0])
        return "gpu", indices
    if isinstance(gpus, (list, tuple)):
        return "gpu", [int(g) for g in gpus]
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < -1:
        raise GemLightningError(f"trainer.gpus={gpus!r}: use 0 (CPU), a number of GPUs, -1 (all) or '0,1'")
    if gpus == 0:
        return "cpu", "auto"
    return "gpu", gpus


def resolve_devices(trainer_cfg: DictConfig | dict) -> dict[str, Any]:
    """Trainer keyword arguments with ``gpus`` translated and GPU requests checked against the machine."""
    kwargs = (
        OmegaConf.to_container(trainer_cfg, resolve=True) if isinstance(trainer_cfg, DictConfig) else dict(trainer_cfg)
    )
    gpus = kwargs.pop("gpus", None)
    if gpus is not None:
        kwargs["accelerator"], kwargs["devices"] = _gpus_to_devices(gpus)
    wants_gpu = kwargs.get("accelerator") in ("gpu", "cuda")
    if wants_gpu:
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        asked = kwargs.get("devices", "auto")
        needed = len(asked) if isinstance(asked, list) else asked if isinstance(asked, int) and asked > 0 else 1
        if available < needed:
            setting = f"trainer.gpus={gpus}" if gpus is not None else f"trainer.accelerator={kwargs['accelerator']}"
            raise GemLightningError(
                f"{setting} asks for {needed} GPU(s) but this machine has {available} CUDA device(s) "
                "(torch.cuda.is_available() is False or too few). Train on the CPU with trainer.gpus=0 or trainer=cpu."
            )
    on_gpu = wants_gpu or (kwargs.get("accelerator", "auto") == "auto" and torch.cuda.is_available())
    if kwargs.get("sync_batchnorm") and not on_gpu:
        # PyTorch's SyncBatchNorm runs on CUDA only; on CPUs (gloo) each process keeps its own statistics.
        kwargs["sync_batchnorm"] = False
    return auto_settings.trainer_precision_and_benchmark(kwargs, on_gpu)


def build_trainer(trainer_cfg: DictConfig, **extra: Any) -> pl.Trainer:
    kwargs = resolve_devices(trainer_cfg)
    extra["callbacks"] = [*extra.get("callbacks", []), HeadOnlyFeatures()]
    if kwargs.get("enable_progress_bar") is False:
        # Lightning refuses a progress-bar callback beside enable_progress_bar=False; the flag is what the
        # user typed last (the callback comes from the default callbacks group), so it wins.
        extra["callbacks"] = [c for c in extra["callbacks"] if not isinstance(c, ProgressBar)]
    return hydra.utils.instantiate(kwargs, **extra)
