"""Older checkpoints keep loading: format 1's stored config is renamed on load, and a stored data config gets the
keys added after it was written, with the values they had before."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf
from PIL import Image

from gem_lightning.config.composition import compose_train_config
from gem_lightning.config.schema import DataSchema, ModelSchema
from gem_lightning.inference.predictor import Predictor
from gem_lightning.models.checkpoint_format import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_KEY,
    DATA_KEYS_BEFORE_THEY_EXISTED,
    MODEL_KEYS_BEFORE_THEY_EXISTED,
    read_checkpoint,
    upgrade_checkpoint,
)
from gem_lightning.models.classifier import GemClassifier
from tests.helpers.configs import TINY_DEMO
from tests.helpers.workplace import CONFIG_DIR, FIXTURES_DIR

# Written by 23652ba (flat modules) from a tiny demo run with background=grabcut and scheduler=warmup_cosine:
# everything such a checkpoint holds but its weights.
FORMAT_1 = FIXTURES_DIR / "checkpoint_format1_description.json"
# The keys of the first data config that checkpoints stored (f23a715's conf/data/gemstones.yaml).
FIRST_DATA_KEYS = {
    *("_target_", "root", "cache_dir", "split", "val_fraction", "test_fraction", "split_seed", "image_size"),
    *("batch_size", "num_workers", "pin_memory", "max_image_pixels", "max_classes", "train_transform"),
    *("augment_policy", "demo"),
}
# The first model's arguments (9671e2c's GemClassifier; optimiser and schedule are never stored).
FIRST_MODEL_KEYS = {
    *("class_names", "backbone", "pretrained", "allow_download", "label_smoothing", "dropout"),
    *("freeze_backbone_epochs", "image_size", "augment_policy"),
}


def _targets(node) -> list[str]:
    if isinstance(node, list):
        return [t for item in node for t in _targets(item)]
    if not isinstance(node, dict):
        return []
    own = [node["_target_"]] if isinstance(node.get("_target_"), str) else []
    return own + [t for value in node.values() for t in _targets(value)]


def _format_1_checkpoint(weights_from: Path, path: Path) -> Path:
    """This run's weights under the format-1 description (same tiny demo: 10 classes, ResNet-18 at 32 px), with
    only the first model's hyperparameters and no temperature, as the oldest checkpoints have them."""
    old = json.loads(FORMAT_1.read_text())
    checkpoint = torch.load(weights_from, map_location="cpu", weights_only=True)
    assert old[CHECKPOINT_KEY]["class_names"] == checkpoint[CHECKPOINT_KEY]["class_names"]
    checkpoint["hyper_parameters"] = {key: old["hyper_parameters"][key] for key in FIRST_MODEL_KEYS}
    del checkpoint["state_dict"]["temperature"]
    checkpoint[CHECKPOINT_KEY] = old[CHECKPOINT_KEY]
    torch.save(checkpoint, path)
    return path


def test_a_checkpoint_written_before_the_package_tree_loads_with_todays_module_paths(trained_demo_run, tmp_path):
    old_config = json.loads(FORMAT_1.read_text())[CHECKPOINT_KEY]["config"]
    assert "gem_lightning.datamodule.GemDataModule" in _targets(old_config)  # really the flat names
    path = _format_1_checkpoint(trained_demo_run.checkpoint, tmp_path / "format1.ckpt")

    model = GemClassifier.from_checkpoint(path)
    assert read_checkpoint(path)[CHECKPOINT_KEY]["format"] == CHECKPOINT_FORMAT
    # The keys the first model lacked do what the code did before them: channels first, the backbone trained.
    assert model.hparams.channels_last is False and model.hparams.head_only is False
    assert model.memory_format == torch.contiguous_format and float(model.temperature) == 1.0
    # Every stored _target_ names what a run composed today would: same nodes, same objects.
    composed = compose_train_config(CONFIG_DIR, [*TINY_DEMO, "scheduler=warmup_cosine", "background=grabcut"])
    # Callbacks added to callbacks=default since format 1 are not in its config, and need not be.
    added_since = {"gem_lightning.training.epoch_lines.EpochLines"}
    for node in ("data", "background", "background_swap", "scheduler", "callbacks"):
        today = [t for t in _targets(OmegaConf.to_container(composed[node], resolve=True)) if t not in added_since]
        assert sorted(_targets(model.run_config[node])) == sorted(today), node
    for target in _targets(model.run_config):
        hydra.utils.get_object(target)

    # And it does its job: the predictor cuts a photo out with the stored GrabCut settings and identifies it.
    predictor = Predictor(path, cache_dir=tmp_path / "cache", progress=False)
    assert predictor.describe_background() == "OpenCV GrabCut"
    photo = next((trained_demo_run.cache_dir / "demo_gems" / "Ruby").iterdir())
    Image.open(photo).convert("RGB").save(tmp_path / "ruby.jpg")
    (prediction,), skipped = predictor.predict_files([tmp_path / "ruby.jpg"])
    assert not skipped and abs(float(prediction.probabilities.sum()) - 1) < 1e-5


def test_every_key_added_since_the_first_checkpoint_has_its_old_value_on_record():
    # Fails when a data or model key is added without saying what older checkpoints did before it existed.
    data_today = {field.name for field in dataclasses.fields(DataSchema)}
    assert data_today == FIRST_DATA_KEYS | set(DATA_KEYS_BEFORE_THEY_EXISTED)
    assert not FIRST_DATA_KEYS & set(DATA_KEYS_BEFORE_THEY_EXISTED)
    stored = {"class_names"} | {field.name for field in dataclasses.fields(ModelSchema)}
    model_today = stored - {"_target_", "optimizer", "scheduler"}
    assert model_today == FIRST_MODEL_KEYS | set(MODEL_KEYS_BEFORE_THEY_EXISTED)
    assert not FIRST_MODEL_KEYS & set(MODEL_KEYS_BEFORE_THEY_EXISTED)


def test_a_data_config_stored_before_a_key_existed_rebuilds_with_the_old_behaviour(tmp_path):
    description = json.loads(FORMAT_1.read_text())[CHECKPOINT_KEY]
    data = description["config"]["data"]
    description["config"]["data"] = {key: data[key] for key in FIRST_DATA_KEYS}
    description["config"]["data"].update(root=str(tmp_path / "gems"), cache_dir=str(tmp_path / "cache"))
    upgraded = upgrade_checkpoint({CHECKPOINT_KEY: description})[CHECKPOINT_KEY]["config"]["data"]
    datamodule = hydra.utils.instantiate(OmegaConf.create(upgraded))  # every argument is there
    assert datamodule.background is None and datamodule.background_swap is None
    assert datamodule.cache_images is False and datamodule.augment_on == "loader"
    assert datamodule.split_settings.near_duplicate_threshold is None
    assert datamodule.split_settings.label_conflicts == "keep"
