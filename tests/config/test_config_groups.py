"""Every option of every config group composes and instantiates into the real object."""

from __future__ import annotations

import dataclasses
import inspect

import hydra
import pytest
import torch
from hydra.errors import ConfigCompositionException
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import Logger
from omegaconf import MISSING, OmegaConf

from gem_lightning.config.schema import DataSchema, ModelSchema
from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.errors import GemLightningError
from gem_lightning.models.classifier import GemClassifier
from gem_lightning.models.lr_schedules import steps_per_batch
from gem_lightning.training.run import _instantiate_each
from gem_lightning.training.trainer_factory import build_trainer
from tests.helpers.configs import compose_config
from tests.helpers.workplace import CONFIG_DIR


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_each_group_has_the_options_the_design_names():
    assert {"gemstones", "demo"} <= set(_options("data"))
    assert {"resnet18", "resnet34", "resnet50", "efficientnet_lite0"} <= set(_options("model"))
    assert {"none", "seed", "colour_preserving", "colour_jitter", "colour_safe_auto"} <= set(_options("augment"))
    assert {"adam", "adamw", "sgd"} <= set(_options("optim"))
    assert {"none", "cosine", "warmup_cosine"} <= set(_options("scheduler"))
    assert {"default", "cpu", "gpu", "ddp", "ddp_cpu"} <= set(_options("trainer"))
    assert {"tensorboard", "csv"} <= set(_options("logger"))
    assert {"seed_report", "demo", "gpu_check", "best_cpu"} <= set(_options("experiment"))


@pytest.mark.parametrize("option", _options("data"))
def test_data_options_instantiate(option, tmp_path):
    cfg = compose_config([f"data={option}"], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    assert isinstance(datamodule, GemDataModule)
    assert datamodule.batch_size == cfg.data.batch_size


@pytest.mark.parametrize(
    ("group", "schema", "built"), [("data", DataSchema, GemDataModule), ("model", ModelSchema, GemClassifier)]
)
def test_the_yaml_is_the_one_place_data_and_model_settings_have_values(group, schema, built, tmp_path):
    # The schema is read from the class's signature, which takes each key without a default: a value lives
    # only in the YAML, and the YAML gives every key one.
    schema_keys = {field.name for field in dataclasses.fields(schema)} - {"_target_"}
    parameters = [p for p in inspect.signature(built.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY]
    assert {p.name for p in parameters} == schema_keys and len(schema_keys) > 10
    assert all(p.default is inspect.Parameter.empty for p in parameters)
    assert all(field.default is MISSING for field in dataclasses.fields(schema))
    node = compose_config([], tmp_path)[group]
    assert not OmegaConf.missing_keys(node) and set(node) - {"_target_"} == schema_keys


def test_a_key_left_without_a_value_is_named_before_any_work(tmp_path):
    with pytest.raises(GemLightningError, match=r"^data\.val_fraction, model\.dropout: no value given"):
        compose_config(["data.val_fraction=???", "model.dropout=???"], tmp_path)


@pytest.mark.parametrize("option", _options("augment"))
def test_augment_policies_give_uint8_squares(option, tmp_path):
    cfg = compose_config([f"augment={option}", "data.image_size=40"], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    if option == "none":  # no transform: training reads the evaluation squares as they are
        assert datamodule.train_transform is None and not datamodule.augmented
        return
    image = torch.randint(0, 256, (3, 90, 70), dtype=torch.uint8)
    out = datamodule.train_transform(image)
    assert out.dtype == torch.uint8 and out.shape == (3, 40, 40)
    assert datamodule.augment_policy == option


def test_rotation_fill_is_black_like_the_background(tmp_path):
    cfg = compose_config(["augment=colour_preserving", "data.image_size=32"], tmp_path)
    rotate = hydra.utils.instantiate(cfg.augment.train).transforms[0]
    white = torch.full((3, 64, 64), 255, dtype=torch.uint8)
    torch.manual_seed(0)
    corners = [rotate(white)[:, 0, 0] for _ in range(20)]
    assert any((c == 0).all() for c in corners)  # rotated-in corners are black, never grey or white


def test_colour_preserving_policy_never_shifts_hue(tmp_path):
    cfg = compose_config(["augment=colour_preserving"], tmp_path)
    names = [t["_target_"].rsplit(".", 1)[-1] for t in cfg.augment.train.transforms]
    assert not {"RandomChannelPermutation", "RandomInvert", "Grayscale", "RandomGrayscale"} & set(names)
    jitter = next(t for t in cfg.augment.train.transforms if t["_target_"].endswith("ColorJitter"))
    assert "hue" not in jitter and "saturation" not in jitter


@pytest.mark.parametrize("option", _options("model"))
def test_model_options_instantiate(option, tmp_path, offline_torch_home):
    cfg = compose_config([f"model={option}", "model.pretrained=false"], tmp_path)
    model = hydra.utils.instantiate(cfg.model, class_names=["a", "b", "c"])
    logits = model(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert logits.shape == (2, 3)
    assert model.hparams.backbone == cfg.model.backbone.value


def test_the_model_node_alone_builds_the_model_a_run_trains(tmp_path):
    # train() passes only the class names (they come from the data folder); the optimiser, the schedule,
    # the input size and the augmentation policy come from their own groups through the node.
    overrides = ["model.pretrained=false", "optim=sgd", "optim.lr=0.123", "scheduler=cosine", "trainer.max_epochs=7"]
    cfg = compose_config([*overrides, "data.image_size=96", "augment=colour_preserving"], tmp_path)
    model = hydra.utils.instantiate(cfg.model, class_names=["a", "b", "c"])
    optimiser = model.configure_optimizers()
    assert isinstance(optimiser["optimizer"], torch.optim.SGD)
    assert {group["initial_lr"] for group in optimiser["optimizer"].param_groups} == {0.123}
    assert optimiser["lr_scheduler"]["scheduler"].T_max == 7
    assert (model.hparams.image_size, model.hparams.augment_policy) == (96, "colour_preserving")
    assert model.example_input_array.shape == (1, 3, 96, 96)

    unscheduled = hydra.utils.instantiate(
        compose_config(["model.pretrained=false"], tmp_path).model, class_names=["a", "b"]
    )
    assert unscheduled.scheduler_factory is None


@pytest.mark.parametrize("option", _options("optim"))
def test_optimisers_are_partials(option, tmp_path):
    cfg = compose_config([f"optim={option}"], tmp_path)
    factory = hydra.utils.instantiate(cfg.optim)
    optimiser = factory(params=[torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(optimiser, torch.optim.Optimizer)
    assert optimiser.param_groups[0]["lr"] == cfg.optim.lr


def test_adam_is_the_default_with_the_reports_learning_rate(tmp_path):
    cfg = compose_config([], tmp_path)
    assert cfg.optim._target_ == "torch.optim.Adam" and cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.model.backbone.value == "resnet18"


@pytest.mark.parametrize("option", _options("scheduler"))
def test_schedulers(option, tmp_path):
    cfg = compose_config([f"scheduler={option}"], tmp_path)
    if not cfg.scheduler:
        assert option == "none"
        return
    optimiser = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    factory = hydra.utils.instantiate(cfg.scheduler)
    # Per-step schedules get the run's length from the model (tests/models/test_recipe.py trains with one).
    scheduler = factory(optimizer=optimiser, **({"total_steps": 20} if steps_per_batch(factory) else {}))
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)


@pytest.mark.parametrize("option", _options("trainer"))
def test_trainer_options(option, tmp_path):
    cfg = compose_config([f"trainer={option}"], tmp_path)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        with pytest.raises(GemLightningError, match="CUDA"):
            build_trainer(cfg.trainer)
    else:
        assert isinstance(build_trainer(cfg.trainer, logger=False), Trainer)


def test_callbacks_and_loggers_instantiate(tmp_path):
    for logger in _options("logger"):
        cfg = compose_config([f"logger={logger}"], tmp_path)
        built = _instantiate_each(cfg.logger)
        assert len(built) == 1 and isinstance(built[0], Logger)
    callbacks = _instantiate_each(cfg.callbacks)
    assert callbacks and all(isinstance(c, Callback) for c in callbacks)


@pytest.mark.parametrize("option", _options("experiment"))
def test_experiments_compose(option, tmp_path):
    cfg = compose_config([f"experiment={option}"], tmp_path)
    if option == "seed_report":
        assert (cfg.data.batch_size, cfg.optim.lr, cfg.trainer.max_epochs) == (48, pytest.approx(3e-4), 30)
        assert cfg.augment.name == "seed" and cfg.data.split.value == "pooled"
    if option == "gpu_check":  # issue 6's GPU check: ResNet-18, 224 px, 3 epochs, bf16, augmentation on the GPU
        assert (cfg.model.backbone.value, cfg.data.image_size, cfg.trainer.max_epochs) == ("resnet18", 224, 3)
        assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
        assert cfg.data.augment_on.value == "device"


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.split=random", "Invalid value 'random'"),
        ("data.batch_size=abc", "could not be converted to Integer"),
        ("data.batchsize=32", "Key 'batchsize' not in 'DataSchema'"),
        ("model.backbone=resnet101", "Invalid value 'resnet101'"),
        ("model.white_balance=gray", "Invalid value 'gray'"),
        ("model.pretrainned=false", "Key 'pretrainned' not in 'ModelSchema'"),
    ],
)
def test_bad_keys_and_values_fail_while_composing(override, message, tmp_path):
    with pytest.raises(ConfigCompositionException) as caught:
        compose_config([override], tmp_path)
    assert message in str(caught.value.__cause__ or caught.value)
