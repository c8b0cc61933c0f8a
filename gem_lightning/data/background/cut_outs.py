"""Prepared images: every source photo cut out onto black once, downscaled, and cached by content.

The cache lives in ``<cache_dir>/prepared/<variant>/`` where the variant names the backend, its model and
every setting that changes the output (a hash of them), and each image is stored under its source file's
sha256: ``ab/abcdef....png`` plus ``ab/abcdef....json`` (how it was made: method, share of the frame the
mask kept, why a fallback was used). Consequences:

* a second run over unchanged data does no work, and renaming or moving photos costs nothing;
* the JSON is written after the PNG, both atomically (temp + rename), so an image counts as done only when
  both are complete: a killed run resumes with what is left, and its stray temp files are removed under
  a lock on the variant folder, which also makes a second concurrent run wait and then find everything done;
* the user's photos are only ever opened for reading.

Work runs in ``workers`` processes (spawned, so no forked torch/OpenMP state), each with its share of the
cores for onnxruntime/OpenCV, with a progress bar (ETA) and a closing summary.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from gem_lightning.data.background.backends import (
    FALLBACKS,
    GrabCutBackend,
    RembgBackend,
    cut_out,
)
from gem_lightning.data.image_files import to_rgb, upright
from gem_lightning.errors import GemLightningError
from gem_lightning.files.atomic_writes import write_bytes_atomically, write_text_atomically
from gem_lightning.files.locks import exclusive_lock
from gem_lightning.machine import auto_settings
from gem_lightning.machine.child_processes import die_with_parent
from gem_lightning.progress_bars import progress_with_eta

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass(frozen=True)
class SourceImage:
    sha256: str
    path: Path  # absolute; opened read-only


@dataclass
class PreparationSummary:
    done: int = 0
    cached: int = 0
    skipped: int = 0  # unusable source files, never sent to the backend
    failed: int = 0
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)  # source path -> error

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"done {self.done}, cached {self.cached}, skipped {self.skipped}, failed {self.failed} in "
            f"{self.seconds:.1f} s ({self.images_per_second:.2f} images/s)"
        )

    def as_dict(self) -> dict:
        return {
            "done": self.done,
            "cached": self.cached,
            "skipped": self.skipped,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "failures": dict(sorted(self.failures.items())),
        }


class BackgroundRemoval:
    """What ``conf/background/*.yaml`` configures; ``backend=None`` means train on the original photos."""

    def __init__(
        self,
        backend: RembgBackend | GrabCutBackend | None = None,
        max_side: int = 512,
        min_foreground: float = 0.02,
        max_foreground: float = 0.98,
        fallback: str = "original",
        workers: int | str = "auto",
        threads_per_worker: int | str = "auto",
        progress: bool = True,
    ):
        if fallback not in FALLBACKS:
            raise GemLightningError(f"background.fallback={fallback!r}: use one of {', '.join(FALLBACKS)}")
        if max_side < 16:
            raise GemLightningError(f"background.max_side={max_side} is too small; use 16 or more")
        if not 0 <= min_foreground < max_foreground <= 1:
            raise GemLightningError(
                f"background.min_foreground={min_foreground} and max_foreground={max_foreground} must satisfy "
                "0 <= min < max <= 1"
            )
        self.backend = backend
        self.max_side = max_side
        self.min_foreground, self.max_foreground = min_foreground, max_foreground
        self.fallback = fallback
        self.workers = auto_settings.process_count(workers, "background.workers")
        self.threads_per_worker = auto_settings.threads_per_process(
            threads_per_worker, "background.threads_per_worker", self.workers
        )
        self.progress = progress

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    def _fallback_backend(self) -> GrabCutBackend | None:
        if self.fallback == "grabcut" and not isinstance(self.backend, GrabCutBackend):
            return GrabCutBackend()
        return None

    def settings(self) -> dict:
        """Everything that changes a prepared image, so it can key the cache."""
        fallback_backend = self._fallback_backend()
        return {
            "format": CACHE_FORMAT,
            **self.backend.settings(),
            "max_side": self.max_side,
            "min_foreground": self.min_foreground,
            "max_foreground": self.max_foreground,
            "fallback": self.fallback,
            "fallback_backend": fallback_backend.settings() if fallback_backend else None,
        }

    def variant_dir(self, cache_dir: Path) -> Path:
        settings = self.settings()
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
        model = settings.get("model")
        name = "-".join(part for part in (settings["backend"], model, f"{self.max_side}px", digest) if part)
        return Path(cache_dir) / "prepared" / name

    def check(self) -> None:
        """Fail before any work when something needed is missing (a model file, OpenCV)."""
        self.backend.check()
        fallback_backend = self._fallback_backend()
        if fallback_backend is not None:
            fallback_backend.check()

    # -- the cache -----------------------------------------------------------------------------------------

    @staticmethod
    def _record_path(variant: Path, sha256: str) -> Path:
        return variant / sha256[:2] / f"{sha256}.json"

    def lookup(self, cache_dir: Path, sha256s: list[str]) -> dict[str, dict]:
        """sha256 -> record for every image already prepared (records name their PNG relative to the variant)."""
        variant = self.variant_dir(cache_dir)
        found = {}
        for sha256 in sha256s:
            record_path = self._record_path(variant, sha256)
            try:
                record = json.loads(record_path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if record.get("file") is None or (variant / record["file"]).is_file():
                found[sha256] = record
        return found

    def prepare(self, sources: list[SourceImage], cache_dir: Path, skipped: int = 0) -> tuple[dict, PreparationSummary]:
        """Prepare what is not cached yet. Returns (sha256 -> record, summary)."""
        self.check()
        variant = self.variant_dir(cache_dir)
        unique = list({source.sha256: source for source in sources}.values())
        started = time.perf_counter()
        summary = PreparationSummary(skipped=skipped)
        with exclusive_lock(variant / ".lock") as locked:
            for stray in variant.glob("*/.*.tmp"):
                # Left by a killed run. With the lock held no one else is writing; without a lock (Windows)
                # only temp files untouched for an hour are surely abandoned.
                if locked or time.time() - stray.stat().st_mtime > 3600:
                    stray.unlink(missing_ok=True)
            records = self.lookup(cache_dir, [s.sha256 for s in unique])
            todo = [source for source in unique if source.sha256 not in records]
            summary.cached = len(unique) - len(todo)
            if todo:
                log.info(
                    "preparing %d of %d image(s) with %s into %s (%d process(es) x %d thread(s))",
                    len(todo),
                    len(unique),
                    self.backend.describe(),
                    variant,
                    min(self.workers, len(todo)),
                    self.threads_per_worker,
                )
                for source, outcome in self._run(todo, variant):
                    if isinstance(outcome, dict):
                        records[source.sha256] = outcome
                        summary.done += 1
                    else:
                        summary.failed += 1
                        summary.failures[str(source.path)] = outcome
        summary.seconds = time.perf_counter() - started
        log.info("background removal (%s): %s", self.backend.describe(), summary.line())
        return records, summary

    def _run(self, todo: list[SourceImage], variant: Path):
        """Yield (source, record or error text) as images finish, with a progress bar."""
        workers = min(self.workers, len(todo))
        state = (self.backend, self._fallback_backend(), self._job_settings(), self.threads_per_worker)
        with progress_with_eta(self.progress) as progress:
            task = progress.add_task(f"cutting out ({self.backend.describe()})", total=len(todo))
            if workers == 1:
                _start_worker(*state)
                for source in todo:
                    yield source, _prepare_one(source, variant)
                    progress.advance(task)
                return
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                workers, mp_context=context, initializer=_start_pool_worker, initargs=state
            ) as pool:
                futures = {pool.submit(_prepare_one, source, variant): source for source in todo}
                try:
                    for future in as_completed(futures):
                        yield futures[future], future.result()
                        progress.advance(task)
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise

    def _job_settings(self) -> dict:
        return {
            "max_side": self.max_side,
            "min_foreground": self.min_foreground,
            "max_foreground": self.max_foreground,
            "fallback": self.fallback,
        }


# -- inside a worker process -----------------------------------------------------------------------------

_WORKER: dict = {}


def _start_pool_worker(*state) -> None:
    die_with_parent()  # a killed prepare/train.py must not leave its workers cutting out images
    _start_worker(*state)


def _start_worker(backend, fallback_backend, job: dict, threads: int) -> None:
    backend.load(threads)
    if fallback_backend is not None:
        fallback_backend.load(threads)
    _WORKER.update(backend=backend, fallback_backend=fallback_backend, job=job)


def load_downscaled(path: Path, max_side: int) -> Image.Image:
    """Decode ``path`` upright as RGB with its longest side at most ``max_side`` (never enlarged)."""
    with Image.open(path) as image:
        if image.format == "JPEG":
            width, height = image.size
            scale = max_side / max(width, height)
            if scale < 1:
                # Let the JPEG decoder drop to 1/2, 1/4 or 1/8 while both sides stay above the target.
                image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        image.load()
        rgb = to_rgb(upright(image))
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    # A fresh image without the source's metadata: its EXIF orientation is applied already, and rembg
    # would otherwise apply it a second time (seen on train/Diaspore/diaspore_33.jpg).
    return Image.fromarray(np.asarray(rgb), mode="RGB")


def _prepare_one(source: SourceImage, variant: Path) -> dict | str:
    """Cut one image out and store it; returns its record, or the error text."""
    job = _WORKER["job"]
    started = time.perf_counter()
    try:
        image = load_downscaled(source.path, job["max_side"])
        result = cut_out(
            image,
            _WORKER["backend"],
            job["fallback"],
            job["min_foreground"],
            job["max_foreground"],
            _WORKER["fallback_backend"],
        )
    except Exception as error:  # one bad file must not stop thousands of others; it is reported
        return f"{type(error).__name__}: {error}"
    relative = None
    if result.image is not None:
        relative = f"{source.sha256[:2]}/{source.sha256}.png"
        buffer = io.BytesIO()
        result.image.save(buffer, format="PNG", compress_level=3)
        write_bytes_atomically(variant / relative, buffer.getvalue())
    record = {
        "sha256": source.sha256,
        "source": str(source.path),
        "file": relative,
        "method": result.method,
        "foreground": round(result.foreground, 4),
        "flag": result.flag,
        "width": result.image.width if result.image is not None else None,
        "height": result.image.height if result.image is not None else None,
        "seconds": round(time.perf_counter() - started, 4),
    }
    # Written last: its presence is what marks the image as done.
    write_text_atomically(BackgroundRemoval._record_path(variant, source.sha256), json.dumps(record, indent=1))
    return record
