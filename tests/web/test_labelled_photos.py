"""Photos the user labels on the page: kept under their class, never over another file."""

from __future__ import annotations

import pytest

from gem_lightning.errors import GemLightningError
from gem_lightning.web.labelled_photos import save_labelled_photo


def test_a_labelled_photo_is_kept_once_under_its_class_and_nothing_is_overwritten(tmp_path):
    first, second = tmp_path / "upload" / "IMG_1.JPG", tmp_path / "other" / "IMG_1.JPG"
    for path, content in ((first, b"first photo"), (second, b"second photo")):
        path.parent.mkdir()
        path.write_bytes(content)
    folder = tmp_path / "my_source"
    kept, written = save_labelled_photo(first, "Ruby", ["Ruby", "Emerald"], folder)
    assert written and kept.parent == folder / "Ruby" and kept.read_bytes() == b"first photo"
    assert kept.name.startswith("IMG_1-") and kept.suffix == ".jpg"
    assert save_labelled_photo(first, "Ruby", ["Ruby", "Emerald"], folder) == (kept, False)
    # Another photo of the same name: a file of its own beside the first.
    other, written = save_labelled_photo(second, "Ruby", ["Ruby", "Emerald"], folder)
    assert written and other != kept and kept.read_bytes() == b"first photo"
    with pytest.raises(GemLightningError, match="'Opal' is not one of the model's classes"):
        save_labelled_photo(first, "Opal", ["Ruby", "Emerald"], folder)
    assert first.read_bytes() == b"first photo"  # the upload itself is left as it was
