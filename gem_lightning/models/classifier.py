"""The LightningModule: a pretrained backbone, a new head for the gem classes, the optimiser and metrics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection, SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from gem_lightning.choices import checked_choice, plain_value
from gem_lightning.errors import GemLightningError
from gem_lightning.models import checkpoint_format
from gem_lightning.models.backbones import create_backbone
from gem_lightning.models.batch_mixing import batch_mixer
from gem_lightning.models.checkpoint_format import CHECKPOINT_KEY
from gem_lightning.models.lr_schedules import STEP_SCHEDULE_ARGUMENT, steps_per_batch
from gem_lightning.models.source_prototypes import SourcePrototypes
from gem_lightning.models.white_balance import WhiteBalance, white_balanced

STAGES = ("train", "val", "test")


def network_input(images: torch.Tensor, white_balance: str, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """What a backbone takes from uint8 (or 0-1 float) RGB ``images``: 0-1 floats, white-balanced by the rule
    ``white_balance``, normalised by its ``mean`` and ``std``. The classifier and its exported files both use it."""
    if images.dtype == torch.uint8:
        images = images.float().div(255)
    return (white_balanced(images, white_balance) - mean) / std


def _stage_metrics(stage: str, num_classes: int) -> MetricCollection:
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "acc_top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            "f1_macro": MulticlassF1Score(num_classes, average="macro"),
        },
        prefix=f"{stage}/",
        # Compute groups share state between metrics whose states looked equal after the first update;
        # after a first validation batch of few classes that merged top-5 accuracy with macro F1 and
        # logged a wrong F1 (tests/models/test_classifier_metrics.py). Three metrics cost nothing to keep apart.
        compute_groups=False,
    )


class GemClassifier(pl.LightningModule):
    """Classifies uint8 (or 0-1 float) RGB batches; normalisation by the backbone's own mean/std is inside.

    Build it from the composed config: the arguments are conf/model/*.yaml's keys, which hold their values;
    ``optimizer`` and ``scheduler`` are ``_partial_`` factories. A checkpoint describes itself (``description``), so
    ``from_checkpoint`` rebuilds the model from the file alone.
    """

    # frozen_stages follows mmdetection's: nothing flows back through the kept stages, so a step is cheaper, and
    # generic edge and colour filters are not refitted to a few dozen photos per class. head_only trains on
    # backbone features computed once, cached and served in place of images (gem_lightning.training.head_only_features).
    def __init__(
        self,
        class_names: list[str],
        *,
        backbone: str,
        pretrained: bool,
        allow_download: bool,
        optimizer: Callable[..., torch.optim.Optimizer] | None,
        scheduler: Callable[..., Any] | None,
        label_smoothing: float,
        dropout: float,
        backbone_lr_scale: float,
        mixup_alpha: float,
        cutmix_alpha: float,
        freeze_backbone_epochs: int,
        frozen_stages: int,
        image_size: int,
        augment_policy: str,
        head_only: bool,
        channels_last: bool,
        compile: bool,
        white_balance: str,
    ):
        super().__init__()
        # Plain Python types only, so checkpoints load with torch.load(weights_only=True).
        backbone = plain_value(backbone)  # a config enum becomes its plain name
        white_balance = checked_choice(white_balance, WhiteBalance, "model.white_balance")
        class_names = [str(name) for name in class_names]  # not an OmegaConf ListConfig
        # train() logs the composed run config itself; hparams hold what rebuilding the network needs.
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        self.class_names = class_names
        num_classes = len(self.class_names)
        built = create_backbone(backbone, pretrained=pretrained, allow_download=allow_download)
        self.backbone = built.network
        last_stage = len(built.stages) - 1
        if not 0 <= frozen_stages <= last_stage:
            raise GemLightningError(
                f"model.frozen_stages={frozen_stages}: {backbone} has a stem and {last_stage} stages; "
                f"use 0 (train all) to {last_stage}"
            )
        # A plain list, not a registered module: the stages' weights are already in the backbone's state dict.
        self._fixed_stages = built.stages[: frozen_stages + 1] if frozen_stages else []
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(built.num_features, num_classes))
        self.mean, self.std = built.mean, built.std
        self.register_buffer("_mean", torch.tensor(built.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(built.std).view(1, 3, 1, 1), persistent=False)
        # Temperature scaling (gem_lightning.evaluation.calibration): fitted on the validation split after training and
        # saved in the state dict, so every copy of the checkpoint predicts with it. 1.0 = uncalibrated.
        self.register_buffer("temperature", torch.ones(()))
        # Fitted after training on the validation split, stored in the description (checkpoint_format.FITTED):
        self.calibration: dict | None = None  # how the temperature was fitted (NLL and ECE before/after)
        self.prediction_sets: dict | None = None  # conformal scores fitted after it (trust.prediction_sets)
        self.novelty: dict | None = None  # class centroids and validation distances (trust.novelty)
        self.training_photos: dict | None = None  # their features and files (trust.nearest_photos)
        self.selective_answers: dict | None = None  # validation confidences, right or wrong (trust.selective_answers)
        self.source_prototypes: dict | None = None  # a user's source, when adapted (models.source_prototypes)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler or None  # scheduler=none composes an empty node: no schedule
        # The composed Hydra config of the run that trained this model, saved into every checkpoint.
        self.run_config: dict | None = None
        # One photo as the loaders serve it, so the model summary shows real FLOPs and layer sizes, not zeros.
        self.example_input_array = torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.batch_mixer = batch_mixer(mixup_alpha, cutmix_alpha, num_classes)
        if backbone_lr_scale < 0:
            raise GemLightningError(f"model.backbone_lr_scale={backbone_lr_scale} must be 0 (frozen) or positive")
        # Keyed "<stage>_..." because ModuleDict keys may not shadow Module methods such as train().
        self.metrics = nn.ModuleDict({f"{s}_metrics": _stage_metrics(s, num_classes) for s in STAGES})
        self.losses = nn.ModuleDict({f"{s}_loss": MeanMetric() for s in STAGES})
        self.val_acc_best = MaxMetric()
        # Saved in checkpoints, so a resumed run's val/acc_best continues the interrupted run's maximum.
        self.val_acc_best.persistent(True)
        # Test images that duplicate a train image (predefined splits) are flagged by the data module;
        # these metrics skip them, so a run reports both the raw and the leak-free test accuracy.
        self.leak_free_metrics = _stage_metrics("test_leak_free", num_classes)
        # A metric, not a count, so that under data parallelism every process sees the sum over all of them.
        self.leaked_seen = SumMetric()
        self._backbone_frozen = False
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # Weights in the activations' layout, so no convolution converts them on every call. Loading a
        # checkpoint copies into these tensors and keeps their layout.
        self.backbone.to(memory_format=self.memory_format)
        self._set_backbone_frozen(head_only)

    # -- forward -------------------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(images))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of (N, F) features: the head's, plus an adapted checkpoint's source prototypes (every path)."""
        logits = self.head(features)
        if self.source_prototypes is not None:
            logits = logits + SourcePrototypes.from_dict(self.source_prototypes).added_logits(features)
        return logits

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled feature vectors (N, F): what the head classifies. Every path into the network
        passes here, so every one white-balances (``model.white_balance``) and normalises alike (``network_input``)."""
        images = images.contiguous(memory_format=self.memory_format)
        return self.backbone(network_input(images, self.hparams.white_balance, self._mean, self._std))

    def probabilities(self, images: torch.Tensor, calibrated: bool = True) -> torch.Tensor:
        """Class probabilities, divided by the fitted temperature first unless ``calibrated`` is false."""
        logits = self(images)
        return (logits / self.temperature if calibrated else logits).softmax(-1)

    # -- frozen warm-up ------------------------------------------------------------------------------------

    def _set_backbone_frozen(self, frozen: bool) -> None:
        self._backbone_frozen = frozen
        self.backbone.requires_grad_(not frozen)
        for stage in self._fixed_stages:  # model.frozen_stages: frozen whatever the warm-up says
            stage.requires_grad_(False)
        if frozen:
            self.backbone.eval()
        elif self.training:
            # The end of a frozen warm-up: its BatchNorm statistics learn again from this epoch's first batch,
            # not only after the epoch's validation switches the module back to training.
            self.train()

    def train(self, mode: bool = True) -> GemClassifier:
        # Lightning switches the whole module back to train mode after every validation; keep a frozen
        # backbone's (or frozen stages') BatchNorm statistics frozen all the same.
        super().train(mode)
        if mode:
            for part in [self.backbone] if self._backbone_frozen else self._fixed_stages:
                part.eval()
        return self

    def on_train_epoch_start(self) -> None:
        if not self.hparams.head_only:
            self._set_backbone_frozen(self.current_epoch < self.hparams.freeze_backbone_epochs)

    def setup(self, stage: str) -> None:
        if self.hparams.compile and stage == "fit" and not getattr(self, "_compiled", False):
            # In place (nn.Module.compile), so state-dict keys and checkpoints stay those of the plain module.
            self.backbone.compile()
            self._compiled = True

    # -- steps ---------------------------------------------------------------------------------------------

    def _shared_step(self, batch: tuple, stage: str) -> torch.Tensor:
        inputs, targets = batch[0], batch[1]
        # The loss's targets: the labels, or soft labels of a MixUp/CutMix batch (training only).
        loss_targets = targets
        if stage == "train" and self.batch_mixer is not None and inputs.ndim == 4:
            images = inputs.float().div(255) if inputs.dtype == torch.uint8 else inputs
            inputs, loss_targets = self.batch_mixer(images, targets)
            # Accuracy against each mixed image's larger share: what a mixed batch can be right about.
            targets = loss_targets.argmax(-1)
        # (N, F) rows are cached backbone features (head_only); (N, 3, H, W) are images.
        logits = self.classify(inputs) if inputs.ndim == 2 else self(inputs)
        loss = self.criterion(logits, loss_targets)
        mean_loss, metrics = self.losses[f"{stage}_loss"], self.metrics[f"{stage}_metrics"]
        mean_loss(loss, weight=targets.numel())
        metrics.update(logits, targets)
        self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
        if stage == "test":
            leaked = batch[2].bool() if len(batch) == 3 else torch.zeros_like(targets, dtype=torch.bool)
            self.leaked_seen.update(leaked.sum())
            if (~leaked).any():
                self.leak_free_metrics.update(logits[~leaked], targets[~leaked])
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        # In float32 whatever trainer.precision says, as the evaluation report computes them: under bf16-mixed a
        # few images flipped, and the logged test/acc and report.md disagreed. One measurement, one number.
        with torch.autocast(self.device.type, enabled=False):
            self._shared_step(batch, "test")

    def on_test_epoch_start(self) -> None:
        self.leaked_seen.reset()
        self.leak_free_metrics.reset()

    def on_test_epoch_end(self) -> None:
        # Only worth a second set of numbers when some test image was a leak; otherwise they equal test/.
        leaked = int(self.leaked_seen.compute())
        if leaked:
            # Values already summed over the processes by compute(); sync_dist only tells Lightning so.
            self.log_dict(self.leak_free_metrics.compute(), sync_dist=True)
            self.log("test_leak_free/leaked_images_left_out", float(leaked), sync_dist=True)

    def on_train_start(self) -> None:
        # A fresh fit starts its maximum afresh; a resumed one (epoch > 0) keeps the maximum it loaded.
        if self.trainer.current_epoch == 0:
            self.val_acc_best.reset()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.metrics["val_metrics"]["acc"].compute())
        # compute() gathers val/acc over the processes, so every one holds the same maximum.
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    # -- optimisation --------------------------------------------------------------------------------------

    def configure_optimizers(self):
        if self.optimizer_factory is None:  # rebuilt from a checkpoint, which keeps no optimiser
            raise GemLightningError("this model has no optimiser to train with: build it from the composed config")
        # A frozen (head_only) backbone has nothing to optimise; weight decay must not touch it either. Two
        # named groups, so the backbone can learn slower than the new head and TensorBoard plots both rates.
        groups = [
            {"name": name, "params": [p for p in part.parameters() if p.requires_grad]}
            for name, part in (("backbone", self.backbone), ("head", self.head))
        ]
        optimizer = self.optimizer_factory(params=[group for group in groups if group["params"]])
        for group in optimizer.param_groups:
            if group["name"] == "backbone":
                group["lr"] *= self.hparams.backbone_lr_scale
        if self.scheduler_factory is None:
            return optimizer
        if steps_per_batch(self.scheduler_factory):
            total_steps = int(self.trainer.estimated_stepping_batches)
            scheduler = self.scheduler_factory(optimizer=optimizer, **{STEP_SCHEDULE_ARGUMENT: total_steps})
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # -- a checkpoint that describes itself ----------------------------------------------------------------

    def description(self) -> dict:
        """Everything inference needs besides the weights (``checkpoint_format.description_of``)."""
        return checkpoint_format.description_of(self)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = self.description()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        checkpoint_format.restore_description(self, checkpoint)

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> GemClassifier:
        """Rebuild a trained classifier from its checkpoint alone (no hub weights, no config files).

        A file that is not a gem-lightning checkpoint raises one GemLightningError (see read_checkpoint).
        """
        settings = checkpoint_format.read_checkpoint(path)["hyper_parameters"]  # completed for older checkpoints
        # The checkpoint's own weights replace the pretrained ones, so never look for those; no optimiser is kept.
        settings = {**settings, "pretrained": False, "optimizer": None, "scheduler": None}
        model = cls.load_from_checkpoint(Path(path), map_location=map_location, weights_only=True, **settings)
        return model.eval()
