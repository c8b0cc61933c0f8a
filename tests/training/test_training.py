"""Real Lightning runs on the rendered demo set: fast_dev_run, checkpoints, TensorBoard, resume."""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning.pytorch as pl
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gem_lightning.models.checkpoint_format import CHECKPOINT_KEY
from gem_lightning.models.classifier import GemClassifier
from gem_lightning.training.run import train
from tests.helpers.configs import TINY_DEMO, compose_config


def _scalar_tags(log_dir: Path) -> dict[str, list]:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}


def test_fast_dev_run_on_demo_data(tmp_path):
    cfg = compose_config([*TINY_DEMO, "+trainer.fast_dev_run=true"], tmp_path)
    result = train(cfg)
    metrics = result.metrics
    assert result.trainer.state.finished
    assert result.trainer.num_training_batches == 1 and torch.isfinite(torch.tensor(metrics["test/loss"]))
    assert result.best_checkpoint == ""  # fast_dev_run saves nothing


def test_two_epochs_write_checkpoints_events_and_a_self_describing_checkpoint(tmp_path):
    cfg = compose_config([*TINY_DEMO, "trainer.max_epochs=2"], tmp_path)
    result = train(cfg)
    metrics = result.metrics
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert Path(result.best_checkpoint).is_file()
    assert (run_dir / "split_manifest.csv").is_file()
    for name in ("val/acc_best", "test/acc", "test/acc_top5", "test/f1_macro", "test/loss"):
        assert name in metrics

    hparams = (run_dir / "tensorboard" / "hparams.yaml").read_text()
    assert "optim/lr: 0.0003" in hparams and "augment/name: colour_preserving" in hparams
    # The answering settings are hyperparameters; the taxonomy's table of classes is not.
    assert "prediction_sets/score: lac" in hparams and "taxonomy/name: gemstones" in hparams
    assert "taxonomy/classes" not in hparams
    scalars = _scalar_tags(run_dir / "tensorboard")
    assert len(scalars["train/loss"]) == 2 and len(scalars["val/loss"]) == 2
    # Both losses are logged at the same steps, so the custom "overfitting" chart overlays them.
    assert [e.step for e in scalars["train/loss"]] == [e.step for e in scalars["val/loss"]]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert "train/loss" in str(events.Tensors("custom_scalars__config__")[0].tensor_proto)

    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    described = checkpoint[CHECKPOINT_KEY]
    assert described["class_names"] == list(result.datamodule.class_names)
    assert described["image_size"] == 32 and described["backbone"] == "resnet18"
    assert described["augment_policy"] == "colour_preserving"
    assert described["mean"] == [0.485, 0.456, 0.406]
    assert described["config"]["data"]["batch_size"] == 16

    # Inference needs the checkpoint alone and reproduces the trained model's outputs.
    restored = GemClassifier.from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    trained = result.model.eval()
    batch = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    trained.load_state_dict(checkpoint["state_dict"])
    with torch.no_grad():
        assert torch.allclose(restored(batch), trained(batch), atol=1e-5)
    assert restored.class_names == described["class_names"]


class _StateAtTrainStart(pl.Callback):
    """What a resumed fit starts from: optimiser state and val/acc_best's maximum."""

    def on_train_epoch_start(self, trainer, module):
        if hasattr(self, "optimizer"):
            return  # the first epoch of the resumed fit only: after every on_train_start hook, before a step
        self.optimizer = {
            k: {n: v.clone() for n, v in state.items()}
            for k, state in trainer.optimizers[0].state_dict()["state"].items()
        }
        self.val_acc_best = float(module.val_acc_best.max_value)


def test_resume_continues_from_the_saved_epoch(tmp_path):
    lean = ["evaluate=false", "label_audit=none"]  # only the epochs and the optimiser are checked here
    first = compose_config([*TINY_DEMO, "trainer.max_epochs=2", *lean], tmp_path / "first")
    train(first)
    last = tmp_path / "first" / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 1

    saved = torch.load(last, map_location="cpu", weights_only=True)
    resumed = compose_config([*TINY_DEMO, "trainer.max_epochs=3", *lean, f"ckpt_path={last}"], tmp_path / "second")
    at_start = _StateAtTrainStart()
    result = train(resumed, extra_callbacks=[at_start])
    trainer = result.trainer
    assert trainer.current_epoch == 3
    # The optimiser continues with its moments and step counts, not from a fresh Adam.
    expected = saved["optimizer_states"][0]["state"]
    assert at_start.optimizer.keys() == expected.keys() and expected
    for index, state in expected.items():
        for name, value in state.items():
            assert torch.equal(at_start.optimizer[index][name], value), (index, name)
    # val/acc_best carries the first run's best score on (the best-checkpoint callback keeps its score only
    # when resuming into the same folder: tests/test_first_use.py).
    best_key = next(k for k in saved["callbacks"] if k.startswith("ModelCheckpoint{'monitor': 'val/acc'"))
    assert at_start.val_acc_best == pytest.approx(float(saved["callbacks"][best_key]["best_model_score"]))
    # Only the one missing epoch ran: the resumed run logged a single training epoch.
    scalars = _scalar_tags(tmp_path / "second" / "run" / "tensorboard")
    assert len(scalars["train/loss"]) == 1
    assert (
        torch.load(tmp_path / "second" / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
            "epoch"
        ]
        == 2
    )


def test_frozen_warm_up_trains_only_the_head(tmp_path):
    cfg = compose_config([*TINY_DEMO, "model.freeze_backbone_epochs=1", "test=false"], tmp_path)
    result = train(cfg)
    trained = result.model
    # train() seeds before building the model, so the same seed rebuilds its starting weights.
    pl.seed_everything(cfg.seed)
    initial = hydra.utils.instantiate(cfg.model, class_names=list(result.datamodule.class_names))
    pairs = zip(initial.backbone.state_dict().values(), trained.backbone.state_dict().values(), strict=True)
    for before, after in pairs:
        assert torch.equal(before, after)  # weights and BatchNorm statistics untouched while frozen
    assert not torch.equal(initial.head[1].weight, trained.head[1].weight)
