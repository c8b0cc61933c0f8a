"""The file a checkpoint decodes for a photo: the photo itself, or its cut-out made as the checkpoint's run made
them (the ``background`` settings its composed config stored), through the content-keyed cut-out cache; for an
ensemble, each member's file for each photo, every way of preparing photos applied once."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class MemberInputs:
    """The photos every member of an ensemble can use (in the order given), the file each member decodes for
    each of them (``files[m][i]`` for member m, photo i), and the photos left out, each once with its reason."""

    photos: list[Path]
    files: list[list[Path]]
    skipped: list[SkippedImage]


def distinct_ways(removals: Sequence[BackgroundRemoval | None]) -> list[BackgroundRemoval | None]:
    """The different ways of preparing photos among the members' ``removals``, in order of first use (members
    that prepare photos alike share one object: ``members_background_removals``)."""
    return list({id(removal): removal for removal in removals}.values())


def members_inputs(
    files: list[Path],
    sha256s: list[str] | None,
    removals: Sequence[BackgroundRemoval | None],
    cache_dir: Path,
) -> MemberInputs:
    """Each member's file for each of ``files``, from the members' background ``removals``
    (``members_background_removals``: members that prepare photos alike share one object).

    Each way runs once over the photos, and the photos are hashed at most once (``sha256s``, when a scan already
    has them, are used as they are). A photo any way cannot use is left out for every member, so that the
    members' answers average over the same photos.
    """
    ways = distinct_ways(removals)
    if sha256s is None and any(way is not None for way in ways):
        sha256s = [file_sha256(path) for path in files]
    decoded: dict[int, dict[Path, Path]] = {}
    reasons: dict[Path, str] = {}
    for way in ways:
        pairs, left_out = prepared_files(files, sha256s, way, cache_dir)
        decoded[id(way)] = dict(pairs)
        for item in left_out:
            reasons.setdefault(item.source, item.reason)  # the first way's reason: one line per photo
    kept = [path for path in files if path not in reasons]
    return MemberInputs(
        kept,
        [[decoded[id(removal)][path] for path in kept] for removal in removals],
        [SkippedImage(path, reasons[path]) for path in files if path in reasons],
    )
