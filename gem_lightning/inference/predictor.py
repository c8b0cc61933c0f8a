"""A trained checkpoint applied to new photos, exactly as its training run saw its validation images."""

# The checkpoint is all it needs: its ``gem_lightning`` entry names the classes, the image size and the
# background removal the run trained on (``background`` of its composed config). A photo goes through the same
# steps as in training: decoded upright as RGB, cut out onto black by the same backend and settings through
# the same content-keyed cache (a photo seen before costs nothing), decoded at reduced scale, shorter side to
# the image size, centre crop; each member of an ensemble its own run's way. Files that cannot be used are
# reported and skipped; the rest go on.

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from gem_lightning.choices import checked_choice
from gem_lightning.data.background.cut_outs import BackgroundRemoval
from gem_lightning.data.image_dataset import GemImageDataset, evaluation_dataset
from gem_lightning.errors import GemLightningError
from gem_lightning.inference.batchnorm_adaptation import batchnorm_adapted
from gem_lightning.inference.logits import (
    TTA_VIEWS,
    averaged_probabilities,
    collect_logits,
    tta_views,
    view_logits,
)
from gem_lightning.inference.loop import DatasetOutputs
from gem_lightning.inference.member_inputs import (
    MemberInputs,
    distinct_ways,
    members_background_removals,
    members_inputs,
)
from gem_lightning.inference.user_photos import SkippedImage, usable_images
from gem_lightning.machine import auto_settings
from gem_lightning.models.classifier import GemClassifier
from gem_lightning.models.source_prototypes import SourcePrototypes

log = logging.getLogger(__name__)

BACKGROUND_CHOICES = ("checkpoint", "none")


@dataclass(frozen=True)
class ImagePrediction:
    source: Path  # the user's file
    model_input: Path  # the file the model decoded: the cut-out in the cache, or the photo itself
    probabilities: torch.Tensor  # (num_classes,), calibrated unless asked otherwise
    features: torch.Tensor  # (F,) the first checkpoint's backbone features of the photo as it is


class Predictor:
    """Class probabilities for photo files or uint8 batches, from one checkpoint or an ensemble of several.

    With one checkpoint and ``tta="none"`` a prediction is that model's softmax at its own temperature; else it
    is the mean over every model and view of each model's calibrated probabilities (``averaged_probabilities``).
    Members must know the same classes; each prepares a photo as its own run did (a member trained on framed
    cut-outs beside one trained on whole photos sees each photo both ways), and the first describes the whole.
    """

    # Members' image sizes may differ: each gets the photos at its own size (member_datasets).
    # The settings a command's config may hold under the same names (conf/predict|evaluate|web.yaml).
    COMMAND_SETTINGS = (
        "cache_dir", "background", "device", "calibrated", "batch_size", "num_workers", "max_image_pixels",
        "progress", "tta", "adapt_batchnorm",
    )  # fmt: skip

    @classmethod
    def from_command_config(cls, cfg: DictConfig, **fixed: Any) -> Predictor:
        """The predictor a command's config describes: ``ckpt`` and whichever ``COMMAND_SETTINGS`` it holds;
        ``fixed`` overrides them (the web page shows no progress bar). The one place commands build it."""
        settings = {key: cfg[key] for key in cls.COMMAND_SETTINGS if key in cfg}
        return cls(cfg.ckpt, **{**settings, **fixed})

    def __init__(
        self,
        checkpoint: str | Path | Sequence[str | Path],
        cache_dir: str | Path = "cache",
        background: str = "checkpoint",
        device: str = "auto",
        calibrated: bool = True,
        batch_size: int = 32,
        num_workers: int = 0,
        max_image_pixels: int = 50_000_000,
        progress: bool = True,
        tta: str = "none",
        adapt_batchnorm: bool = False,
    ):
        checked_choice(background, BACKGROUND_CHOICES, "background")
        if batch_size < 1:
            raise GemLightningError(f"batch_size={batch_size} must be at least 1")
        tta_views(tta)
        paths = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
        if not paths:
            raise GemLightningError("ckpt=[]: give a checkpoint, or a list of them for an ensemble")
        self.checkpoints = [Path(path) for path in paths]
        self.checkpoint = self.checkpoints[0]
        self.device = auto_settings.inference_device(device)
        self.models = [GemClassifier.from_checkpoint(path, map_location=self.device) for path in self.checkpoints]
        self.model = self.models[0]
        self._check_members_agree()
        self.tta = tta
        self.adapt_batchnorm = adapt_batchnorm
        self.cache_dir = Path(cache_dir)
        self.calibrated = calibrated
        self.batch_size, self.num_workers = batch_size, num_workers
        self.max_image_pixels = max_image_pixels
        self.progress = progress
        # Each member's background removal, as its run did it; none at all with background="none".
        none = [None] * len(self.models)
        self.backgrounds = members_background_removals(self.models, progress) if background == "checkpoint" else none
        self.background = self.backgrounds[0]

    def _check_members_agree(self) -> None:
        for path, member in zip(self.checkpoints[1:], self.models[1:], strict=True):
            if member.class_names != self.class_names:
                raise GemLightningError(
                    f"ckpt: {path} knows other classes than {self.checkpoint} ({len(member.class_names)} vs "
                    f"{len(self.class_names)}, or another order); an ensemble's members must share them"
                )

    # -- what the checkpoints say --------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    @property
    def image_size(self) -> int:
        """The first member's image size: what model_view shows."""
        return int(self.model.hparams.image_size)

    @property
    def averaging(self) -> bool:
        """Whether predictions average several models or views (else: one model's own softmax)."""
        return len(self.models) > 1 or self.tta != "none"

    @property
    def folder_suffix(self) -> str:
        """``-ensemble3-1a2b3c4d-tta-dihedral``: what a report or export folder adds so that an averaged prediction
        sits beside the single checkpoint's, not over it ("" for one checkpoint without views). The 8 hex digits
        name the members (sha256 of their resolved paths, in order), so two ensembles that share a first member
        each keep their own folder."""
        members = ""
        if len(self.models) > 1:
            listed = "\n".join(str(path.resolve()) for path in self.checkpoints)
            members = f"-ensemble{len(self.models)}-{hashlib.sha256(listed.encode()).hexdigest()[:8]}"
        views = f"-tta-{self.tta}" if self.tta != "none" else ""
        adapted = "-adapted" if self.model.source_prototypes is not None else ""
        return adapted + members + views + ("-bn-adapted" if self.adapt_batchnorm else "")

    @property
    def temperature(self) -> float:
        """The temperature applied to the final logits: the model's own, or 1 where each member's was applied
        before averaging."""
        return float(self.model.temperature) if self.calibrated and not self.averaging else 1.0

    @property
    def prediction_sets(self) -> dict | None:
        """The conformal fit stored in the checkpoint (gem_lightning.trust.prediction_sets), when it applies:
        to one checkpoint's own calibrated probabilities, not to an average of models or views."""
        return self.model.prediction_sets if self.calibrated and not self.averaging else None

    @property
    def selective_answers(self) -> dict | None:
        """The fit for answering only when sure (trust.selective_answers), where it applies, as the sets'."""
        return self.model.selective_answers if self.calibrated and not self.averaging else None

    @property
    def novelty(self) -> dict | None:
        """The first checkpoint's novelty fit (gem_lightning.trust.novelty): it measures that checkpoint's
        features of the photo as it is, which every prediction carries, ensemble or not."""
        return self.model.novelty

    @property
    def training_photos(self) -> dict | None:
        """The first checkpoint's training photos (gem_lightning.trust.nearest_photos), in the same space."""
        return self.model.training_photos

    def describe_model(self) -> str:
        """``best.ckpt``, or ``an ensemble of 3 checkpoints, tta=dihedral (8 views)``."""
        adapted = ", BatchNorm statistics adapted to the photos" if self.adapt_batchnorm else ""
        if self.model.source_prototypes is not None:
            prototypes = SourcePrototypes.from_dict(self.model.source_prototypes)
            adapted = f" (adapted to {prototypes.describe(self.class_names)})" + adapted
        if not self.averaging:
            return self.checkpoint.name + adapted
        members = f"an ensemble of {len(self.models)} checkpoints" if len(self.models) > 1 else self.checkpoint.name
        views = f", tta={self.tta} ({len(TTA_VIEWS[self.tta])} views)" if self.tta != "none" else ""
        return f"{members}{views}{adapted}, calibrated probabilities averaged"

    def logits(
        self, datasets: Sequence[GemImageDataset], description: str = "predicting"
    ) -> tuple[DatasetOutputs, float]:
        """(logits, temperature to divide them by) for one dataset per member, each at that member's image size:
        ``member_logits`` combined as ``averaging`` says."""
        return self._combined(self.member_logits(datasets, description))

    def member_logits(
        self, datasets: Sequence[GemImageDataset], description: str = "predicting"
    ) -> list[DatasetOutputs]:
        """Each member's own raw logits (per view with ``tta``) and features of its dataset; with
        ``adapt_batchnorm`` each member's BatchNorm statistics are first measured on its dataset (a copy: the
        next call starts from the checkpoint's again)."""
        options = {"batch_size": self.batch_size, "num_workers": self.num_workers, "progress": self.progress}
        models = self.models
        if self.adapt_batchnorm:
            models = [batchnorm_adapted(m, d, **options) for m, d in zip(models, datasets, strict=True)]
        return [
            collect_logits(model, dataset, description=description, tta=self.tta, **options)
            for model, dataset in zip(models, datasets, strict=True)
        ]

    def _combined(self, results: list[DatasetOutputs]) -> tuple[DatasetOutputs, float]:
        if not self.averaging:
            return results[0], self.temperature
        temperatures = [float(model.temperature) if self.calibrated else 1.0 for model in self.models]
        return averaged_probabilities(results, temperatures), 1.0

    def member_datasets(
        self,
        inputs: MemberInputs,
        labels: Sequence[int],
        leaked: list[bool] | None = None,
        first: GemImageDataset | None = None,
    ) -> list[GemImageDataset]:
        """One dataset per member: its own files of ``inputs`` (``model_inputs``) with ``labels`` (and ``leaked``
        flags) in the same order, at its own image size; members that decode the same files at one size share it.
        ``first``: a dataset of the first member's files already at hand (a run's split, with its cached squares),
        used for every member that decodes those files at its size."""
        datasets: dict[tuple[int, int], GemImageDataset] = {}
        if first is not None:
            datasets[(id(self.backgrounds[0]), first.side)] = first
        chosen = []
        for model, removal, files in zip(self.models, self.backgrounds, inputs.files, strict=True):
            key = (id(removal), int(model.hparams.image_size))
            if key not in datasets:
                datasets[key] = evaluation_dataset(list(zip(files, labels, strict=True)), key[1], leaked)
            chosen.append(datasets[key])
        return chosen

    @property
    def preparation_ways(self) -> list[BackgroundRemoval | None]:
        """The different ways the members prepare photos (one for a single checkpoint), in order of first use."""
        return distinct_ways(self.backgrounds)

    def describe_background(self) -> str:
        """``rembg u2netp``, or for members that prepare photos differently each way: ``none (...); rembg u2netp``."""
        ways = self.preparation_ways
        return "; ".join(way.backend.describe() if way is not None else "none (photos as they are)" for way in ways)

    # -- photos --------------------------------------------------------------------------------------------

    def model_inputs(self, files: list[Path], sha256s: list[str] | None = None) -> MemberInputs:
        """Each member's file for each of the ``files`` every member can use, and those left out
        (``member_inputs.members_inputs``). ``sha256s``: the files' hashes when a scan already has them."""
        return members_inputs(files, sha256s, self.backgrounds, self.cache_dir)

    def predict_files(self, files: list[Path]) -> tuple[list[ImagePrediction], list[SkippedImage]]:
        usable, skipped = usable_images([Path(f) for f in files], self.max_image_pixels)
        inputs = self.model_inputs(usable)
        skipped += inputs.skipped  # the caller says each once (predict's table, the page's message)
        if not inputs.photos:
            return [], skipped
        result, temperature = self.logits(self.member_datasets(inputs, [-1] * len(inputs.photos)))
        probabilities = (result.outputs / temperature).softmax(-1)
        predictions = [
            ImagePrediction(source, model_input, row, features)
            for source, model_input, row, features in zip(
                inputs.photos, inputs.files[0], probabilities, result.features, strict=True
            )
        ]
        return predictions, skipped

    def model_view(self, model_input: Path) -> np.ndarray:
        """(S, S, 3) uint8: the image exactly as the model takes it (after any cut-out, resize and crop)."""
        image, _ = evaluation_dataset([(model_input, -1)], self.image_size)[0]
        return image.permute(1, 2, 0).numpy()

    # -- tensors -------------------------------------------------------------------------------------------

    def predict_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities for a (N, 3, S, S) uint8 batch at the checkpoints' image size S (0-255 RGB)."""
        expected = (3, self.image_size, self.image_size)
        sizes = {int(model.hparams.image_size) for model in self.models}
        if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != expected or len(sizes) > 1:
            raise GemLightningError(
                f"this model takes uint8 RGB batches of shape (N, {', '.join(map(str, expected))}); got "
                f"{images.dtype} {tuple(images.shape)}. Use predict_files for photos of any size or mode "
                "(and for an ensemble of several image sizes)."
            )
        views = tta_views(self.tta)
        no_labels = torch.empty(0)
        with torch.inference_mode():
            per_model = [view_logits(model.eval(), images.to(self.device), views)[0].cpu() for model in self.models]
        results = [DatasetOutputs(out if self.tta != "none" else out[:, 0], no_labels, no_labels) for out in per_model]
        combined, temperature = self._combined(results)
        return (combined.outputs / temperature).softmax(-1)
