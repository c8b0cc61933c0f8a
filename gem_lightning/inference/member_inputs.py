"""The file a checkpoint decodes for a photo: the photo itself, or its cut-out made as the checkpoint's run made
them (the ``background`` settings its composed config stored), through the content-keyed cut-out cache."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import OmegaConf

from gem_lightning.data.background.cut_out_job import SourceImage
from gem_lightning.data.background.cut_outs import BackgroundRemoval
from gem_lightning.files.hashing import file_sha256
from gem_lightning.inference.user_photos import SkippedImage
from gem_lightning.models.classifier import GemClassifier


def members_background_removals(models: list[GemClassifier], progress: bool) -> list[BackgroundRemoval | None]:
    """Each checkpoint's background removal; those with the same settings share one, so that an ensemble cuts a
    photo out once for each way its members prepare photos."""
    keys = [json.dumps((model.run_config or {}).get("background"), sort_keys=True) for model in models]
    shared: dict[str, BackgroundRemoval | None] = {}
    for key, model in zip(keys, models, strict=True):
        if key not in shared:
            shared[key] = background_removal(model, progress)
    return [shared[key] for key in keys]


def background_removal(model: GemClassifier, progress: bool) -> BackgroundRemoval | None:
    """The background removal the checkpoint's run trained on, ready to use; None for photos as they are."""
    settings = (model.run_config or {}).get("background")
    if not settings or settings.get("backend") is None:
        return None
    removal = hydra.utils.instantiate(OmegaConf.create(settings))
    removal.progress = progress
    removal.check()  # a missing rembg model file stops here, before any photo is read
    return removal


def prepared_files(
    files: list[Path], sha256s: list[str] | None, removal: BackgroundRemoval | None, cache_dir: Path
) -> tuple[list[tuple[Path, Path]], list[SkippedImage]]:
    """(photo, file decoded for it) for the ``files`` that ``removal`` can use, and those it left out.

    ``sha256s`` are the files' hashes when already known (a dataset scan has them); they key the cache.
    """
    if removal is None or not files:
        return [(path, path) for path in files], []
    sha256s = sha256s or [file_sha256(path) for path in files]
    sources = [SourceImage(sha256, path.resolve()) for sha256, path in zip(sha256s, files, strict=True)]
    records, summary = removal.prepare(sources, cache_dir)
    variant = removal.variant_dir(cache_dir)
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
