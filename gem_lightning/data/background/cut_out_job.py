"""One photo cut out and stored, as a pool worker (or the calling process) does it for ``cut_outs``."""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from gem_lightning.data.background.backends import cut_out
from gem_lightning.data.background.framing import DETAIL_FACTOR
from gem_lightning.data.image_files import to_rgb, upright
from gem_lightning.files.atomic_writes import write_bytes_atomically, write_text_atomically
from gem_lightning.machine.child_processes import die_with_parent


@dataclass(frozen=True)
class SourceImage:
    sha256: str
    path: Path  # absolute; opened read-only


def record_path(variant: Path, sha256: str) -> Path:
    """Where the record of the photo with content ``sha256`` lives in the cache folder ``variant``."""
    return variant / sha256[:2] / f"{sha256}.json"


# The worker's state, set once per process by start_worker.

_WORKER: dict = {}


def start_pool_worker(*state) -> None:
    die_with_parent()  # a killed prepare/train.py must not leave its workers cutting out images
    start_worker(*state)


def start_worker(backend, fallback_backend, job: dict, threads: int) -> None:
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


def prepare_one(source: SourceImage, variant: Path) -> dict | str:
    """Cut one image out and store it; returns its record, or the error text."""
    job = _WORKER["job"]
    started = time.perf_counter()
    try:
        detail = DETAIL_FACTOR if job["frame"] == "stone" else 1
        image = load_downscaled(source.path, job["max_side"] * detail)
        result = cut_out(
            image,
            _WORKER["backend"],
            job["fallback"],
            job["min_foreground"],
            job["max_foreground"],
            _WORKER["fallback_backend"],
            max_side=job["max_side"],
            frame=job["frame"],
            margin=job["margin"],
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
    write_text_atomically(record_path(variant, source.sha256), json.dumps(record, indent=1))
    return record
