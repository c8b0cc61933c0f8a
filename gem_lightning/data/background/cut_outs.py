"""Prepared images: every source photo cut out onto black once, downscaled, and cached by content."""

# The cache lives in ``<cache_dir>/prepared/<variant>/`` where the variant names the backend, its model and
# every setting that changes the output (a hash of them), and each image is stored under its source file's
# sha256: ``ab/abcdef....png`` plus ``ab/abcdef....json`` (how it was made: method, share of the frame the
# mask kept, why a fallback was used). Consequences:
#
# * a second run over unchanged data does no work, and renaming or moving photos costs nothing;
# * the JSON is written after the PNG, both atomically (temp + rename), so an image counts as done only when
#   both are complete: a killed run resumes with what is left, and its stray temp files are removed under
#   a lock on the variant folder, which also makes a second concurrent run wait and then find everything done;
# * the user's photos are only ever opened for reading.
#
# Work runs in ``workers`` processes (spawned, so no forked torch/OpenMP state), each with its share of the
# cores for onnxruntime/OpenCV, with a progress bar (ETA) and a closing summary.

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from gem_lightning.choices import checked_choice
from gem_lightning.data.background.backends import (
    FALLBACKS,
    GrabCutBackend,
    RembgBackend,
)
from gem_lightning.data.background.cut_out_job import (
    SourceImage,
    prepare_one,
    record_path,
    start_pool_worker,
    start_worker,
)
from gem_lightning.data.background.framing import FRAMES
from gem_lightning.errors import GemLightningError
from gem_lightning.files.locks import exclusive_lock
from gem_lightning.machine import auto_settings
from gem_lightning.progress_bars import progress_with_eta

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


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
        frame: str = "whole",
        margin: float = 0.15,
        workers: int | str = "auto",
        threads_per_worker: int | str = "auto",
        progress: bool = True,
    ):
        checked_choice(fallback, FALLBACKS, "background.fallback")
        checked_choice(frame, FRAMES, "background.frame")
        if not 0 <= margin <= 1:
            raise GemLightningError(f"background.margin={margin} must be between 0 and 1 (a share of the stone's size)")
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
        self.frame, self.margin = frame, margin
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
            # Only a framed variant names its frame, so caches made before framing existed stay valid.
            **({"frame": self.frame, "margin": self.margin} if self.frame != "whole" else {}),
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

    def lookup(self, cache_dir: Path, sha256s: list[str]) -> dict[str, dict]:
        """sha256 -> record for every image already prepared (records name their PNG relative to the variant)."""
        variant = self.variant_dir(cache_dir)
        found = {}
        for sha256 in sha256s:
            record_file = record_path(variant, sha256)
            try:
                record = json.loads(record_file.read_text())
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
                start_worker(*state)
                for source in todo:
                    yield source, prepare_one(source, variant)
                    progress.advance(task)
                return
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                workers, mp_context=context, initializer=start_pool_worker, initargs=state
            ) as pool:
                futures = {pool.submit(prepare_one, source, variant): source for source in todo}
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
            "frame": self.frame,
            "margin": self.margin,
        }
