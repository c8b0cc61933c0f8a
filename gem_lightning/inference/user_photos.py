"""Which of the files a user names are photos: ``input=`` (a file, a folder or a glob) and a check of each.

``find_images`` lists the files (a folder's hidden files and non-image extensions left out); ``usable_images``
keeps those that decode as the training scan checks them and gives every other one its reason.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from gem_lightning.data.image_files import UnusableImage, has_image_extension, inspect_image
from gem_lightning.errors import GemLightningError


@dataclass(frozen=True)
class SkippedImage:
    source: Path
    reason: str


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
