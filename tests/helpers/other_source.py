"""Photos as another source would take them: new demo photos under a dim, bluish light."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from gem_lightning.data.demo import DemoGemSet

LABELLED_PER_CLASS = 3


def shop_photos(tmp_path: Path, per_class: int = 8, labelled: int = LABELLED_PER_CLASS) -> tuple[Path, Path, Path]:
    """``per_class`` new demo photos a class under a dim, bluish light, in three labelled folders: every photo
    (``shop``), the first ``labelled`` of each class (``shop_labelled``), and the rest (``shop_rest``)."""
    rendered = DemoGemSet(images_per_class=per_class, image_size=48, seed=5).render(tmp_path / "rendered")
    folders = [tmp_path / name for name in ("shop", "shop_labelled", "shop_rest")]
    for class_folder in sorted(path for path in rendered.iterdir() if path.is_dir()):
        for index, photo in enumerate(sorted(class_folder.glob("*.png"))):
            with Image.open(photo) as image:
                red, green, blue = image.convert("RGB").split()
                lit = Image.merge("RGB", (red.point(lambda v: v // 3), green.point(lambda v: v // 3), blue))
            part = folders[1] if index < labelled else folders[2]
            for folder in (folders[0], part):
                (folder / class_folder.name).mkdir(parents=True, exist_ok=True)
                lit.save(folder / class_folder.name / photo.name)
    return folders[0], folders[1], folders[2]
