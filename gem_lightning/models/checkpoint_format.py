"""The checkpoint format: where a checkpoint describes itself, and the one check of a checkpoint file."""

# Every checkpoint holds, under ``CHECKPOINT_KEY``, what inference needs besides the weights (classes, image size,
# normalisation, temperature, the run's config), tagged with ``CHECKPOINT_FORMAT``. ``read_checkpoint`` is the
# one place a command opens a checkpoint file, with one line for each way a file can be wrong; ``upgrade_checkpoint``
# brings an older description up to date on every load.

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from gem_lightning.errors import GemLightningError

CHECKPOINT_KEY = "gem_lightning"  # where a checkpoint describes itself for inference
# 2: the package tree (gem_lightning.data, .models, ...); 1 named the flat modules of 23652ba and earlier.
CHECKPOINT_FORMAT = 2

# Every module of format 1 whose objects a stored config names (``_target_``), with its place since format 2.
FORMAT_1_MODULES = {
    "gem_lightning.datamodule": "gem_lightning.data.datamodule",
    "gem_lightning.demo_data": "gem_lightning.data.demo",
    "gem_lightning.prepared_images": "gem_lightning.data.background.cut_outs",
    "gem_lightning.background_removal": "gem_lightning.data.background.backends",
    "gem_lightning.background_swap": "gem_lightning.data.background.swap",
    "gem_lightning.classifier": "gem_lightning.models.classifier",
    "gem_lightning.lr_schedules": "gem_lightning.models.lr_schedules",
    "gem_lightning.multirun_summary": "gem_lightning.training.multirun_summary",
    "gem_lightning.tensorboard_layout": "gem_lightning.training.tensorboard_layout",
    "gem_lightning.weight_averaging": "gem_lightning.training.weight_averaging",
}

# Every data key added after the first stored data config, with the value that does what the code did before the
# key existed (a record of history, not today's default): a stored data config that lacks one predates it. A new
# data key goes here too, or checkpoints written before it stop rebuilding their split (a test checks the list).
DATA_KEYS_BEFORE_THEY_EXISTED = {
    "background": None,  # no background removal
    "near_duplicate_threshold": None,  # no near-duplicate groups (exact copies are the nearest today)
    "label_conflicts": "keep",  # one image under two classes was not looked for
    "cache_images": False,  # every epoch decoded the files
    "augment_on": "loader",  # augmentation ran in the loader processes
    "min_images_per_class": 1,  # every class with images was kept
    "background_swap": None,  # no background swap
    "extra_roots": [],  # the data root's photos only
    "extra_roots_held_out": True,  # extra sources were split 70/15/15 like the data root
}
# The same for the model's stored hyperparameters (its __init__ arguments but the optimiser and schedule).
MODEL_KEYS_BEFORE_THEY_EXISTED = {
    "backbone_lr_scale": 1.0,  # one learning rate for backbone and head
    "mixup_alpha": 0.0,  # no MixUp
    "cutmix_alpha": 0.0,  # no CutMix
    "frozen_stages": 0,  # every stage trained
    "head_only": False,  # the backbone trained on images
    "channels_last": False,  # NCHW activations
    "compile": False,  # no torch.compile
    "white_balance": "none",  # photos as they are
}


# What a model learns after training (on its validation split) and keeps in its description, attributes of the
# same names on GemClassifier: the record of the temperature fit, the conformal prediction sets, the novelty rule
# the training photos it can show as look-alikes, and the answers' confidences for answering only when sure; in an
# adapted checkpoint, the user's source prototypes.
FITTED = ("calibration", "prediction_sets", "novelty", "training_photos", "selective_answers", "source_prototypes")


def description_of(model) -> dict:
    """A GemClassifier's description: everything inference needs besides the weights."""
    return {
        "format": CHECKPOINT_FORMAT,
        "class_names": model.class_names,
        "image_size": model.hparams.image_size,
        "mean": list(model.mean),
        "std": list(model.std),
        "backbone": model.hparams.backbone,
        "augment_policy": model.hparams.augment_policy,
        "config": model.run_config,
        "temperature": float(model.temperature),
        **{name: getattr(model, name) for name in FITTED},
    }


def restore_description(model, checkpoint: dict) -> None:
    """Give a GemClassifier being loaded the run config and the fits its checkpoint describes."""
    description = upgrade_checkpoint(checkpoint).get(CHECKPOINT_KEY, {})
    model.run_config = description.get("config")
    for name in FITTED:
        setattr(model, name, description.get(name))


def read_checkpoint(path: str | Path, setting: str = "ckpt") -> dict:
    """The checkpoint at ``path`` as a dict, or one GemLightningError saying what is wrong with the file.

    The one check for every command that takes a checkpoint (predict, evaluate, export, the page, and
    train.py's ``ckpt_path=`` before any data work). It loads with ``weights_only=True`` and never advises
    otherwise: a file holding arbitrary Python objects is not ours, and unpickling it could run its code.
    """
    path = Path(path)
    where = f"{setting}={path}"
    hint = "give the best.ckpt or last.ckpt in a run's checkpoints/ folder (train.py prints 'best checkpoint: ...')"
    if path.is_dir():
        raise GemLightningError(f"{where} is a folder, not a checkpoint file: {hint}")
    if not path.is_file():
        raise GemLightningError(f"checkpoint not found: {where}: {hint}")
    size = path.stat().st_size
    unreadable = f"cannot read checkpoint {where}: not a PyTorch checkpoint, or cut short ({size:,} bytes); {hint}"
    if size == 0:
        raise GemLightningError(f"cannot read checkpoint {where}: it is an empty file (0 bytes); {hint}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(path):  # torch.save writes a zip; random or cut-short bytes fail here too
            raise GemLightningError(unreadable) from None
        raise GemLightningError(
            f"cannot read checkpoint {where}: it holds Python objects that gem-lightning checkpoints never contain "
            f"(it is not loaded: unpickling them could run code); {hint}"
        ) from None
    except Exception:  # a truncated zip, random bytes, another format: torch raises several types
        raise GemLightningError(unreadable) from None
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint:
        raise GemLightningError(
            f"{where} is not a gem-lightning checkpoint (no '{CHECKPOINT_KEY}' entry): train one with train.py"
        )
    return upgrade_checkpoint(checkpoint)


def upgrade_checkpoint(checkpoint: dict) -> dict:
    """Bring ``checkpoint`` to ``CHECKPOINT_FORMAT`` in place and return it. Format 1's stored config names the flat
    modules (renamed here); a stored data config, the hyperparameters and the weights get the keys they predate,
    with their old values."""
    if isinstance(checkpoint.get("hyper_parameters"), dict):
        checkpoint["hyper_parameters"] = {**MODEL_KEYS_BEFORE_THEY_EXISTED, **checkpoint["hyper_parameters"]}
    if isinstance(checkpoint.get("state_dict"), dict):
        # Written before calibration existed: uncalibrated. Before val/acc_best was kept: no maximum yet.
        checkpoint["state_dict"].setdefault("temperature", torch.ones(()))
        checkpoint["state_dict"].setdefault("val_acc_best.max_value", torch.tensor(float("-inf")))
    description = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(description, dict):
        return checkpoint
    config = description.get("config")
    if description.get("format", 1) < 2:
        config = _renamed_targets(config)
    if isinstance(config, dict) and isinstance(config.get("data"), dict):
        config["data"] = {**DATA_KEYS_BEFORE_THEY_EXISTED, **config["data"]}
    description["config"] = config
    description["format"] = CHECKPOINT_FORMAT
    return checkpoint


def _renamed_targets(node):
    if isinstance(node, list):
        return [_renamed_targets(item) for item in node]
    if not isinstance(node, dict):
        return node
    renamed = {key: _renamed_targets(value) for key, value in node.items()}
    target = renamed.get("_target_")
    if isinstance(target, str):
        module, _, name = target.rpartition(".")
        renamed["_target_"] = f"{FORMAT_1_MODULES.get(module, module)}.{name}"
    return renamed
