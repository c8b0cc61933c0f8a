"""Open any photo a user may have as an upright 8-bit RGB image, and say why a file cannot be used.

Real folders hold more than clean JPEGs: PNGs named ``.jpg`` (three in the Kaggle set), phone photos that
are only upright through their EXIF tag, grayscale, CMYK, palette and 16-bit files. Pillow sniffs the
format from the bytes, so the extension never matters; the mode handling below is ours.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image


class UnusableImage(Exception):
    """The file is not an image we can train on; the message is the reason written to the manifest."""


def has_image_extension(path: Path) -> bool:
    """Whether ``path``'s extension is one Pillow reads (.jpg, .png, .webp, .tif, ...; any letter case).

    Folder scans take only such files: a ``readme.txt`` beside the photos is not a photo that failed, so it
    is neither decoded nor listed as skipped. Pillow's own list, so it grows with the formats it reads.
    """
    return path.suffix.lower() in Image.registered_extensions()


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB. Transparent areas become black, like rembg's cut-outs."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: Pillow's own convert("RGB") clips at 255 and turns most of the photo white,
        # so scale the full 16-bit range down instead.
        values = np.asarray(image, dtype=np.float64)
        scaled = np.clip(values / 257.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = values.max() if values.size and values.max() > 1.0 else 1.0
        scaled = np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


# EXIF orientation tag value -> the transposition that makes the image upright.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112


def exif_orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a damaged EXIF block must not cost the photo; treat it as upright
        return 1
    return value if isinstance(value, int) else 1


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation. Unlike ImageOps.exif_transpose this never rewrites the EXIF block,
    which fails on real-world files with malformed rational tags (seen in the Kaggle gemstone set)."""
    method = _UPRIGHT.get(exif_orientation(image))
    return image if method is None else image.transpose(method)


def load_rgb(path: Path, min_side: int | None = None) -> Image.Image:
    """Decode ``path`` as an upright RGB image.

    ``min_side`` lets the JPEG decoder scale down by 1/2, 1/4 or 1/8 while it decodes (Pillow's ``draft``)
    as long as both sides stay at least that large: a 3,947 px photo then costs a fraction of a full decode,
    and nothing is lost because training resizes far below that anyway.
    """
    with Image.open(path) as image:
        if min_side is not None and image.format == "JPEG":
            image.draft("RGB", (min_side, min_side))
        image.load()
        return to_rgb(upright(image))


def inspect_image(path: Path, max_pixels: int) -> tuple[int, int]:
    """Decode ``path`` once (JPEGs at reduced scale) and return its upright full-size (width, height).

    Raises UnusableImage with a short reason for empty, truncated, non-image and oversized files.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise UnusableImage("empty file")
    try:
        with warnings.catch_warnings():
            # Pillow warns before its own bomb limit; our max_pixels check below is the one we report.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise UnusableImage(
                        f"{width}x{height} px is over the limit of {max_pixels} pixels (data.max_image_pixels)"
                    )
                if image.format == "JPEG":
                    # Decoding at 1/8 scale still reads every entropy-coded block, so truncation is caught.
                    image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.load()
                # Run the same conversion training will, so a file that passes here also loads there.
                to_rgb(upright(image))
                swapped = exif_orientation(image) in (5, 6, 7, 8)  # these rotate by 90 degrees
    except UnusableImage:
        raise
    except Image.DecompressionBombError as error:
        raise UnusableImage(f"too large to decode safely ({error})") from error
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as error:
        # Pillow signals "not an image" and "truncated" through these; the text is enough for the manifest.
        raise UnusableImage(f"cannot decode: {error}") from error
    return (height, width) if swapped else (width, height)
