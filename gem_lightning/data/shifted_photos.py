"""Deterministic shifted copies of a labelled split: photos unlike Kaggle's, as users take them."""

# ``python -m gem_lightning.cli.evaluate ckpt=... shift=<name>`` evaluates the checkpoint's test split after one of
# these changes (``SHIFTS``, the one list of choices):
#
# * ``small``: longest side 96 px, saved as JPEG quality 60 (a shop thumbnail, a phone photo cropped small);
# * ``white`` / ``grey``: the stone kept by a rembg mask, the rest plain white (255) or grey (128);
# * ``small_white``: both.
#
# Each shifted photo is written once under ``<cache_dir>/shifted/<shift>-<mask model>/<class>/<source sha256>.png``
# (atomically; a stopped build resumes), a labelled folder that evaluate then reads as it reads any other
# (``input=``): cut out by the checkpoint's own background removal, if it trained with one, as a user's photo
# would be. The user's photos are only read.

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from gem_lightning.choices import checked_choice
from gem_lightning.data.background.backends import RembgBackend, composite_on
from gem_lightning.data.background.cut_out_job import load_downscaled
from gem_lightning.files.atomic_writes import write_bytes_atomically
from gem_lightning.files.hashing import file_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shift:
    max_side: int | None  # shrink so the longest side is at most this
    jpeg_quality: int | None  # then round-trip through JPEG at this quality
    background: tuple[int, int, int] | None  # replace the background (rembg mask) by this colour


# Photos are decoded as background removal decodes them for training: upright, without their EXIF (rembg would
# turn a tagged photo a second time), longest side at most 512 px (conf/background: max_side).
SOURCE_MAX_SIDE = 512

SHIFTS: dict[str, Shift] = {
    "small": Shift(96, 60, None),
    "white": Shift(None, None, (255, 255, 255)),
    "grey": Shift(None, None, (128, 128, 128)),
    "small_white": Shift(96, 60, (255, 255, 255)),
}


def shift_named(name: str) -> Shift:
    """The shift ``shift=<name>`` means, or one GemLightningError listing the choices."""
    checked_choice(name, SHIFTS, "shift")
    return SHIFTS[name]


def shifted_photo(image: Image.Image, shift: Shift, mask_backend: RembgBackend | None) -> Image.Image:
    """``image`` (RGB) after ``shift``: background first (on the full photo, as a mask needs), then size, JPEG."""
    if shift.background is not None:
        image = composite_on(image, mask_backend.mask(image), shift.background)
    if shift.max_side is not None and max(image.size) > shift.max_side:
        scale = shift.max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
    if shift.jpeg_quality is not None:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=shift.jpeg_quality)
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image


def build_shifted_folder(
    photos: list[tuple[Path, str]], shift_name: str, cache_dir: Path, mask_model: str = "u2netp"
) -> Path:
    """The labelled folder of ``photos`` ((file, class) pairs) after shift ``shift_name``."""
    shift = shift_named(shift_name)
    backend = (
        RembgBackend(mask_model, setting="shift_mask_model", alternative=None) if shift.background is not None else None
    )
    if backend is not None:
        backend.check()  # a missing rembg model file: one line naming it, before any photo is read
    folder = Path(cache_dir) / "shifted" / (f"{shift_name}-{mask_model}" if backend else shift_name)
    made = 0
    for path, label in photos:
        target = folder / label / f"{file_sha256(path)}.png"
        if target.is_file():
            continue
        buffer = io.BytesIO()
        shifted_photo(load_downscaled(path, SOURCE_MAX_SIDE), shift, backend).save(buffer, format="PNG")
        write_bytes_atomically(target, buffer.getvalue())
        made += 1
    log.info("shift=%s: %d photo(s) made, %d reused, in %s", shift_name, made, len(photos) - made, folder)
    return folder
