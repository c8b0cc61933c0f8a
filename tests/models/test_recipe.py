"""The fine-tuning recipe's ingredients, each a config option: per-step warm-up + cosine, a slower backbone,
MixUp/CutMix, weight EMA and the colour-safe automatic augmentation."""

from __future__ import annotations

import colorsys
import json

import hydra
import pytest
import torch
from lightning.pytorch import Callback

from gem_lightning.errors import GemLightningError, find_user_error
from gem_lightning.models.batch_mixing import batch_mixer
from gem_lightning.models.classifier import GemClassifier
from gem_lightning.training.run import train
from tests.helpers.configs import TINY_DEMO, compose_config


def test_warmup_cosine_steps_every_batch_and_the_backbone_learns_slower(tmp_path):
    overrides = [
        "optim=adamw",
        "optim.lr=0.002",
        "scheduler=warmup_cosine",
        "scheduler.warmup_fraction=0.25",
        "scheduler.min_lr=0",
        "model.backbone_lr_scale=0.1",
        "trainer.max_epochs=2",
        "evaluate=false",
        "test=false",
    ]
    seen: list[tuple[float, float]] = []

    class RecordRates(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            groups = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
            seen.append((groups["backbone"], groups["head"]))

    result = train(compose_config([*TINY_DEMO, *overrides], tmp_path), extra_callbacks=[RecordRates()])
    trainer = result.trainer
    assert trainer.lr_scheduler_configs[0].interval == "step"
    steps = int(trainer.estimated_stepping_batches)
    assert len(seen) == steps >= 8
    heads = [head for _, head in seen]
    assert all(backbone == pytest.approx(0.1 * head) for backbone, head in seen)
    peak = heads.index(max(heads))
    assert heads[0] == pytest.approx(0.002 * 0.01)  # warm-up starts at 1 % of the rate
    assert max(heads) == pytest.approx(0.002, rel=0.05) and 0 < peak < steps - 1
    assert heads[:peak] == sorted(heads[:peak]) and heads[peak:] == sorted(heads[peak:], reverse=True)


def test_mixup_and_cutmix_give_soft_targets_and_refuse_a_negative_alpha():
    torch.manual_seed(0)
    images, labels = torch.rand(8, 3, 16, 16), torch.arange(8) % 4
    for mixup, cutmix in ((0.4, 0.0), (0.0, 1.0), (0.4, 1.0)):
        mixed, soft = batch_mixer(mixup, cutmix, 4)(images, labels)
        assert mixed.shape == images.shape and soft.shape == (8, 4)
        assert torch.allclose(soft.sum(-1), torch.ones(8)) and (soft.max(-1).values < 1).all()
    assert batch_mixer(0.0, 0.0, 4) is None
    with pytest.raises(GemLightningError, match="model.cutmix_alpha=-1"):
        batch_mixer(0.0, -1, 4)


def test_a_run_with_mixup_and_cutmix_trains_on_mixed_batches(tmp_path, monkeypatch):
    cfg = compose_config([*TINY_DEMO, "model.mixup_alpha=0.4", "model.cutmix_alpha=1.0", "evaluate=false"], tmp_path)
    model = hydra.utils.instantiate(cfg.model, class_names=list("abcd"))
    assert model.batch_mixer is not None
    # What the loss is computed against, step by step: the real loss, watched.
    targets_seen = []
    loss = torch.nn.CrossEntropyLoss.forward

    def watched(self, logits, targets):
        targets_seen.append((torch.is_grad_enabled(), targets.detach().clone()))
        return loss(self, logits, targets)

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", watched)
    metrics = train(cfg).metrics
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    training = [targets for grad, targets in targets_seen if grad]
    evaluating = [targets for grad, targets in targets_seen if not grad]
    # Every training batch is mixed: soft labels over the 10 classes, some image in it partly of two classes (an
    # image mixed with one of its own class stays wholly one); validation and test batches are not: labels.
    assert training and all(t.ndim == 2 and t.shape[1] == 10 and (t.max(-1).values < 1).any() for t in training)
    assert min(float(t.max(-1).values.min()) for t in training) < 0.9  # not all a faint mix (Beta(0.4) is skewed)
    assert evaluating and all(t.ndim == 1 and not t.is_floating_point() for t in evaluating)


def test_ema_weights_are_what_best_ckpt_holds_and_what_test_and_the_report_measure(tmp_path):
    overrides = ["callbacks=ema", "callbacks.ema.update_starting_at_step=0", "trainer.max_epochs=2"]
    cfg = compose_config([*TINY_DEMO, *overrides], tmp_path)
    result = train(cfg)
    metrics = result.metrics
    checkpoint = torch.load(result.best_checkpoint, weights_only=True)
    averaged, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged if k.startswith("head."))
    summary = json.loads((tmp_path / "run" / "evaluation" / "test" / "evaluation.json").read_text())["summary"]
    assert summary["top1"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert summary["nll_before"] == pytest.approx(metrics["test/loss"], abs=1e-5)
    loaded = GemClassifier.from_checkpoint(result.best_checkpoint)
    assert torch.equal(loaded.head[-1].weight, averaged["head.1.weight"])


def _mean_hue_of_the_stone(image: torch.Tensor) -> float:
    """Mean hue (degrees) of the pixels brighter than the black background."""
    pixels = image.permute(1, 2, 0).reshape(-1, 3).float() / 255
    lit = pixels[pixels.max(-1).values > 0.25]
    hues = [colorsys.rgb_to_hsv(*p.tolist())[0] for p in lit[:: max(1, len(lit) // 300)]]
    return 360 * sum(hues) / len(hues)


@pytest.mark.parametrize(("policy", "keeps_colour"), [("colour_safe_auto", True), ("colour_jitter", False)])
def test_the_colour_safe_policy_keeps_a_lemon_quartz_lemon(policy, keeps_colour, tmp_path):
    cfg = compose_config([f"augment={policy}", "data.image_size=64"], tmp_path)
    transform = hydra.utils.instantiate(cfg.augment.train)
    stone = torch.zeros(3, 82, 82, dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(82), torch.arange(82), indexing="ij")
    disk = (yy - 41) ** 2 + (xx - 41) ** 2 < 30**2
    for channel, value in enumerate((240, 220, 60)):  # lemon yellow: hue about 53 degrees
        stone[channel][disk] = value
    original = _mean_hue_of_the_stone(stone)
    torch.manual_seed(0)
    shifts = [abs(_mean_hue_of_the_stone(transform(stone)) - original) for _ in range(40)]
    # JPEG artefacts and blur move a small stone's mean hue by a few degrees; a hue jitter moves it by tens.
    assert (max(shifts) < 10) == keeps_colour, max(shifts)


def test_frozen_stages_keep_the_stem_and_first_stages_as_they_were_for_the_whole_run(tmp_path):
    # A frozen warm-up epoch first: unfreezing the backbone after it must leave the frozen stages frozen.
    overrides = ["model.frozen_stages=2", "model.freeze_backbone_epochs=1", "trainer.max_epochs=2", "evaluate=false"]
    before: dict[str, torch.Tensor] = {}

    class RecordStart(Callback):
        def on_fit_start(self, trainer, module):
            before.update({k: v.clone() for k, v in module.state_dict().items()})

    result = train(compose_config([*TINY_DEMO, *overrides], tmp_path), extra_callbacks=[RecordStart()])
    model, trainer = result.model, result.trainer
    # The last epoch's weights: the best may be the warm-up epoch, when no stage trained.
    after = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    # The stem (conv1, bn1) and layer1..2 of ResNet-18: weights and BatchNorm statistics untouched.
    stem_to_layer2 = ("backbone.conv1.", "backbone.bn1.", "backbone.layer1.", "backbone.layer2.")
    fixed = [k for k in before if k.startswith(stem_to_layer2)]
    assert fixed and all(torch.equal(before[k], after[k]) for k in fixed)
    assert not torch.equal(before["backbone.layer3.0.conv1.weight"], after["backbone.layer3.0.conv1.weight"])
    assert not torch.equal(before["backbone.layer3.0.bn1.running_mean"], after["backbone.layer3.0.bn1.running_mean"])
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in model.backbone.layer2.parameters())
    assert all(id(p) in optimised for p in model.backbone.layer3.parameters())


def test_frozen_stages_beyond_the_backbone_is_one_error(tmp_path):
    cfg = compose_config([*TINY_DEMO, "model.frozen_stages=5"], tmp_path)
    with pytest.raises(Exception) as raised:
        hydra.utils.instantiate(cfg.model, class_names=list("abcd"))
    expected = "model.frozen_stages=5: resnet18 has a stem and 4 stages; use 0 (train all) to 4"
    assert str(find_user_error(raised.value)) == expected
