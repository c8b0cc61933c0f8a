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
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader

from gem_lightning.classifier import GemClassifier
from gem_lightning.errors import GemLightningError
from gem_lightning.file_hashing import file_sha256
from gem_lightning.image_dataset import GemImageDataset, collate_batch, evaluation_dataset
from gem_lightning.image_files import UnusableImage, has_image_extension, inspect_image
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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise GemLightningError(f"device={device!r}: use auto, cpu, cuda or cuda:<index>") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise GemLightningError(f"device={device}: this machine has no CUDA GPU; use device=cpu or device=auto")
    return resolved


def collect_logits(
    model: GemClassifier,
    dataset: GemImageDataset,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
    description: str = "predicting",
) -> Logits:
    """Run ``model`` (in eval mode, on its own device) over ``dataset`` in batches, with a progress bar."""
    device = next(model.parameters()).device
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_batch,
    )
    logits, targets, leaked = [], [], []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    model.eval()
    with Progress(*columns, disable=not progress, transient=True) as bar, torch.inference_mode():
        task = bar.add_task(description, total=len(dataset))
        for batch in loader:
            images = batch[0].to(device, non_blocking=True)
            logits.append(model(images).float().cpu())
            targets.append(torch.as_tensor(batch[1]))
            leaked.append(torch.as_tensor(batch[2]).bool() if len(batch) == 3 else torch.zeros(len(images), dtype=bool))
            bar.advance(task, len(images))
    if not logits:
        raise GemLightningError("no images to run the model on")
    return Logits(torch.cat(logits), torch.cat(targets).long(), torch.cat(leaked))


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
    """Class probabilities for photo files or uint8 batches, from one checkpoint."""

    def __init__(
        self,
        checkpoint: str | Path,
        cache_dir: str | Path = "cache",
        background: str = "checkpoint",
        device: str = "auto",
        calibrated: bool = True,
        batch_size: int = 32,
        num_workers: int = 0,
        max_image_pixels: int = 50_000_000,
        progress: bool = True,
    ):
        if background not in BACKGROUND_CHOICES:
            raise GemLightningError(f"background={background!r}: use one of {', '.join(BACKGROUND_CHOICES)}")
        if batch_size < 1:
            raise GemLightningError(f"batch_size={batch_size} must be at least 1")
        self.checkpoint = Path(checkpoint)
        self.device = resolve_device(device)
        self.model = GemClassifier.from_checkpoint(self.checkpoint, map_location=self.device)
        self.cache_dir = Path(cache_dir)
        self.calibrated = calibrated
        self.batch_size, self.num_workers = batch_size, num_workers
        self.max_image_pixels = max_image_pixels
        self.progress = progress
        self.background = self._background_removal() if background == "checkpoint" else None

    # -- what the checkpoint says --------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    @property
    def image_size(self) -> int:
        return int(self.model.hparams.image_size)

    @property
    def temperature(self) -> float:
        return float(self.model.temperature) if self.calibrated else 1.0

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
        result = collect_logits(self.model, dataset, self.batch_size, self.num_workers, self.progress)
        probabilities = (result.logits / self.temperature).softmax(-1)
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
        """Probabilities for a (N, 3, S, S) uint8 batch at the checkpoint's image size S (0-255 RGB)."""
        expected = (3, self.image_size, self.image_size)
        if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise GemLightningError(
                f"this model takes uint8 RGB batches of shape (N, {', '.join(map(str, expected))}); got "
                f"{images.dtype} {tuple(images.shape)}. Use predict_files for photos of any size or mode."
            )
        with torch.inference_mode():
            return self.model.probabilities(images.to(self.device), calibrated=self.calibrated).cpu()


def top_k(probabilities: torch.Tensor, class_names: list[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable (class, probability) pairs of one image, most probable first."""
    values, indices = probabilities.topk(min(k, len(class_names)))
    return [(class_names[int(i)], float(v)) for v, i in zip(values, indices, strict=True)]
