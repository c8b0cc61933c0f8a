"""A trained checkpoint applied to new photos, exactly as its training run saw its validation images.

The checkpoint is all it needs: its ``gem_lightning`` entry names the classes, the image size and the
background removal the run trained on (``background`` of its composed config). A photo goes through the same
steps as in training: decoded upright as RGB, cut out onto black by the same backend and settings through
the same content-keyed cache (a photo seen before costs nothing), decoded at reduced scale, shorter side to
the image size, centre crop. Files that cannot be used are reported and skipped; the rest go on.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from gem_lightning import auto_settings
from gem_lightning.classifier import GemClassifier
from gem_lightning.errors import GemLightningError
from gem_lightning.file_hashing import file_sha256
from gem_lightning.image_dataset import GemImageDataset, evaluation_dataset
from gem_lightning.image_files import UnusableImage, has_image_extension, inspect_image
from gem_lightning.inference_loop import run_over_dataset
from gem_lightning.prepared_images import BackgroundRemoval, SourceImage

log = logging.getLogger(__name__)

BACKGROUND_CHOICES = ("checkpoint", "none")


@dataclass(frozen=True)
class ImagePrediction:
    source: Path  # the user's file
    model_input: Path  # the file the model decoded: the cut-out in the cache, or the photo itself
    probabilities: torch.Tensor  # (num_classes,), calibrated unless asked otherwise


@dataclass(frozen=True)
class SkippedImage:
    source: Path
    reason: str


@dataclass(frozen=True)
class Logits:
    """One pass of a model over a dataset: raw logits and, for labelled data, targets and leak flags."""

    logits: torch.Tensor  # (N, C) float32, before temperature
    targets: torch.Tensor  # (N,) int64; -1 where unlabelled
    leaked: torch.Tensor  # (N,) bool; all false when the dataset has no flags


def _dihedral(turns: int, flip: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    def view(images: torch.Tensor) -> torch.Tensor:
        turned = torch.rot90(images, turns, dims=(-2, -1))
        return turned.flip(-1) if flip else turned

    return view


# Test-time views of a square batch. A loose stone has no upright, so every quarter turn and mirror image is
# a photo of the same stone; the one list of choices for predict, evaluate and the web page.
TTA_VIEWS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], ...]] = {
    "none": (_dihedral(0, False),),
    "flip": (_dihedral(0, False), _dihedral(0, True)),
    "quarter_turns": tuple(_dihedral(turns, False) for turns in range(4)),
    "dihedral": tuple(_dihedral(turns, flip) for flip in (False, True) for turns in range(4)),
}


def tta_views(tta: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], ...]:
    if tta not in TTA_VIEWS:
        raise GemLightningError(f"tta={tta!r}: use one of {', '.join(TTA_VIEWS)}")
    return TTA_VIEWS[tta]


def view_logits(model: GemClassifier, images: torch.Tensor, views: Sequence[Callable]) -> torch.Tensor:
    """(N, V, C) float32 logits of a batch on the model's device, one column per test-time view."""
    return torch.stack([model(view(images)).float() for view in views], dim=1)


def collect_logits(
    model: GemClassifier,
    dataset: GemImageDataset,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
    description: str = "predicting",
    tta: str = "none",
) -> Logits:
    """Run ``model`` (in eval mode, on its own device, in float32) over ``dataset`` in batches, with a progress
    bar. With test-time views (``tta``) the logits are (N, V, C), one row per view; else (N, C)."""
    views = tta_views(tta)
    model.eval()
    passed = run_over_dataset(
        lambda images: view_logits(model, images, views),
        dataset,
        next(model.parameters()).device,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        description=description,
    )
    logits = passed.outputs if tta != "none" else passed.outputs[:, 0]
    return Logits(logits, passed.targets, passed.leaked)


def averaged_probabilities(results: list[Logits], temperatures: list[float]) -> Logits:
    """One prediction from several models' (and views') logits: each divided by its own model's temperature,
    made probabilities, and averaged. Returned as logits, log(mean), so softmax gives the mean back and the one
    evaluation path takes it with temperature 1."""
    probabilities = [
        (result.logits / temperature).softmax(-1).reshape(len(result.logits), -1, result.logits.shape[-1])
        for result, temperature in zip(results, temperatures, strict=True)
    ]
    mean = torch.cat(probabilities, dim=1).mean(dim=1)
    first = results[0]
    return Logits(mean.clamp_min(torch.finfo(mean.dtype).tiny).log(), first.targets, first.leaked)


def find_images(spec: str | Path) -> list[Path]:
    """The files ``spec`` names: one file, or every non-hidden image file under a folder (recursively) or matching
    a glob. Files whose extension is no image format's (``notes.txt``) are not photos and are left out silently;
    a file named on its own is always taken, so it gets a reason if it is not an image."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        # Hidden below the folder only: the folder itself may sit inside a hidden one (~/.cache/...).
        files = [
            p
            for p in path.rglob("*")
            if p.is_file() and has_image_extension(p) and not any(s.startswith(".") for s in p.relative_to(path).parts)
        ]
    else:
        files = [
            Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file() and has_image_extension(Path(p))
        ]
    if not files:
        raise GemLightningError(f"input={spec}: no such file, folder, or files matching that pattern")
    return sorted(files)


def usable_images(
    files: list[Path], max_pixels: int, limit: int | None = None
) -> tuple[list[Path], list[SkippedImage]]:
    """The files that decode as images (checked as the training scan checks them), and the rest with why.

    With ``limit``, stops once that many usable files are found.
    """
    usable, skipped = [], []
    for path in files:
        if limit is not None and len(usable) == limit:
            break
        try:
            inspect_image(path, max_pixels)
            usable.append(path)
        except UnusableImage as error:
            skipped.append(SkippedImage(path, str(error)))
        except OSError as error:  # unreadable (permissions, vanished)
            skipped.append(SkippedImage(path, f"cannot read: {error}"))
    return usable, skipped


class Predictor:
    """Class probabilities for photo files or uint8 batches, from one checkpoint or an ensemble of several.

    ``checkpoint`` is one path or a list. With one checkpoint and ``tta="none"`` a prediction is that model's
    softmax at its own temperature. Otherwise (test-time views, several checkpoints) it is the mean over every
    model and view of each model's calibrated probabilities (``averaged_probabilities``). Members must know the
    same classes and cut backgrounds out alike; their image sizes may differ. The first describes the whole.
    """

    # The settings a command's config may hold under the same names (conf/predict|evaluate|web.yaml).
    COMMAND_SETTINGS = (
        "cache_dir", "background", "device", "calibrated", "batch_size", "num_workers", "max_image_pixels",
        "progress", "tta",
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
    ):
        if background not in BACKGROUND_CHOICES:
            raise GemLightningError(f"background={background!r}: use one of {', '.join(BACKGROUND_CHOICES)}")
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
        self.cache_dir = Path(cache_dir)
        self.calibrated = calibrated
        self.batch_size, self.num_workers = batch_size, num_workers
        self.max_image_pixels = max_image_pixels
        self.progress = progress
        self.background = self._background_removal() if background == "checkpoint" else None

    def _check_members_agree(self) -> None:
        first, settings = self.model, (self.model.run_config or {}).get("background")
        for path, member in zip(self.checkpoints[1:], self.models[1:], strict=True):
            if member.class_names != first.class_names:
                raise GemLightningError(
                    f"ckpt: {path} knows other classes than {self.checkpoint} ({len(member.class_names)} vs "
                    f"{len(first.class_names)}, or another order); an ensemble's members must share them"
                )
            if (member.run_config or {}).get("background") != settings:
                raise GemLightningError(
                    f"ckpt: {path} was trained on other background removal than {self.checkpoint}; an ensemble's "
                    "members must see photos prepared alike"
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
        """``-ensemble3-tta-dihedral``: what a report or export folder adds so that an averaged prediction sits
        beside the single checkpoint's, not over it ("" for one checkpoint without views)."""
        members = f"-ensemble{len(self.models)}" if len(self.models) > 1 else ""
        return members + (f"-tta-{self.tta}" if self.tta != "none" else "")

    @property
    def temperature(self) -> float:
        """The temperature applied to the final logits: the model's own, or 1 where each member's was applied
        before averaging."""
        return float(self.model.temperature) if self.calibrated and not self.averaging else 1.0

    def describe_model(self) -> str:
        """``best.ckpt``, or ``an ensemble of 3 checkpoints, tta=dihedral (8 views)``."""
        if not self.averaging:
            return self.checkpoint.name
        members = f"an ensemble of {len(self.models)} checkpoints" if len(self.models) > 1 else self.checkpoint.name
        views = f", tta={self.tta} ({len(TTA_VIEWS[self.tta])} views)" if self.tta != "none" else ""
        return f"{members}{views}, calibrated probabilities averaged"

    def logits(self, datasets: Sequence[GemImageDataset], description: str = "predicting") -> tuple[Logits, float]:
        """(logits, temperature to divide them by) for one dataset per member, each at that member's image size."""
        options = {"batch_size": self.batch_size, "num_workers": self.num_workers, "progress": self.progress}
        results = [
            collect_logits(model, dataset, description=description, tta=self.tta, **options)
            for model, dataset in zip(self.models, datasets, strict=True)
        ]
        return self._combined(results)

    def _combined(self, results: list[Logits]) -> tuple[Logits, float]:
        if not self.averaging:
            return results[0], self.temperature
        temperatures = [float(model.temperature) if self.calibrated else 1.0 for model in self.models]
        return averaged_probabilities(results, temperatures), 1.0

    def member_datasets(self, dataset: GemImageDataset) -> list[GemImageDataset]:
        """``dataset`` (at the first member's size) for every member, rebuilt at the size of those that differ."""
        return [
            dataset
            if int(model.hparams.image_size) == dataset.side
            else evaluation_dataset(dataset.items, int(model.hparams.image_size), dataset.leaked)
            for model in self.models
        ]

    def _background_removal(self) -> BackgroundRemoval | None:
        settings = (self.model.run_config or {}).get("background")
        if not settings or settings.get("backend") is None:
            return None
        removal = hydra.utils.instantiate(OmegaConf.create(settings))
        removal.progress = self.progress
        removal.check()  # a missing rembg model file stops here, before any photo is read
        return removal

    def describe_background(self) -> str:
        return self.background.backend.describe() if self.background is not None else "none (photos as they are)"

    # -- photos --------------------------------------------------------------------------------------------

    def model_inputs(
        self, files: list[Path], sha256s: list[str] | None = None
    ) -> tuple[list[tuple[Path, Path]], list[SkippedImage]]:
        """(source, file the model decodes) for usable ``files``, and those background removal left out.

        ``sha256s`` are the files' hashes when already known (a dataset scan has them); they key the cache.
        """
        if self.background is None or not files:
            return [(path, path) for path in files], []
        sha256s = sha256s or [file_sha256(path) for path in files]
        sources = [SourceImage(sha256, path.resolve()) for sha256, path in zip(sha256s, files, strict=True)]
        records, summary = self.background.prepare(sources, self.cache_dir)
        variant = self.background.variant_dir(self.cache_dir)
        pairs, skipped = [], []
        for path, source in zip(files, sources, strict=True):
            record = records.get(source.sha256)
            if record is None:
                reason = summary.failures.get(str(source.path), "background removal failed")
                skipped.append(SkippedImage(path, reason))
            elif record["file"] is None:
                skipped.append(SkippedImage(path, f"no gem found ({record['flag']}); background.fallback=drop"))
            else:
                pairs.append((path, variant / record["file"]))
        return pairs, skipped

    def predict_files(self, files: list[Path]) -> tuple[list[ImagePrediction], list[SkippedImage]]:
        usable, skipped = usable_images([Path(f) for f in files], self.max_image_pixels)
        pairs, left_out = self.model_inputs(usable)
        skipped += left_out  # the caller says each once (predict's table, the page's message)
        if not pairs:
            return [], skipped
        dataset = evaluation_dataset([(model_input, -1) for _, model_input in pairs], self.image_size)
        result, temperature = self.logits(self.member_datasets(dataset))
        probabilities = (result.logits / temperature).softmax(-1)
        predictions = [
            ImagePrediction(source, model_input, row)
            for (source, model_input), row in zip(pairs, probabilities, strict=True)
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
            per_model = [view_logits(model.eval(), images.to(self.device), views).cpu() for model in self.models]
        results = [Logits(logits if self.tta != "none" else logits[:, 0], no_labels, no_labels) for logits in per_model]
        combined, temperature = self._combined(results)
        return (combined.logits / temperature).softmax(-1)


def top_k(probabilities: torch.Tensor, class_names: list[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable (class, probability) pairs of one image, most probable first."""
    values, indices = probabilities.topk(min(k, len(class_names)))
    return [(class_names[int(i)], float(v)) for v, i in zip(values, indices, strict=True)]
