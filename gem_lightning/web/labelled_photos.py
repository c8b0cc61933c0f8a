"""A photo the user labels on the page, kept as a labelled photo of their own source for ``adapt``.

``save_labelled_photo`` copies the upload to ``<folder>/<class>/<name>-<hash>.<ext>``: the hash of its content
in the name, so the same photo saved twice is one file and no other file is ever overwritten; written
atomically (temp + rename). The folder is then an ``input=`` of ``adapt`` (or ``evaluate``).
"""

from __future__ import annotations

from pathlib import Path

from gem_lightning.errors import GemLightningError
from gem_lightning.files.atomic_writes import write_bytes_atomically
from gem_lightning.files.hashing import file_sha256


def save_labelled_photo(photo: Path, class_name: str, class_names: list[str], folder: Path) -> tuple[Path, bool]:
    """(where it is, whether this call wrote it); a class the model does not know is one error."""
    if class_name not in class_names:
        raise GemLightningError(f"'{class_name}' is not one of the model's classes: choose one from the list")
    photo = Path(photo)
    target = Path(folder) / class_name / f"{photo.stem}-{file_sha256(photo)[:12]}{photo.suffix.lower()}"
    if target.is_file():
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(target, photo.read_bytes())
    return target, True
