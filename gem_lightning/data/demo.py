"""A deterministic synthetic gemstone set, rendered on the spot, for demos and tests without downloads.

Stones are faceted polygons of several cuts on black, like rembg's cut-outs. Pairs of classes share a cut
and differ only in colour (Beryl Golden vs Quartz Lemon is the pair the student report confused), so an
augmentation that shifts hue visibly hurts while a colour-preserving one does not.
"""

from __future__ import annotations

import colorsys
import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from gem_lightning.files.locks import exclusive_lock


@dataclass(frozen=True)
class DemoClass:
    name: str
    cut: str
    hue: float  # degrees
    saturation: float


# Each cut is shared by two classes that differ only in colour (hue 12-30 degrees apart, or saturation).
DEMO_CLASSES = (
    DemoClass("Beryl Golden", "round", 40, 0.85),
    DemoClass("Quartz Lemon", "round", 56, 0.80),
    DemoClass("Ruby", "oval", 352, 0.85),
    DemoClass("Sapphire Pink", "oval", 326, 0.65),
    DemoClass("Emerald", "emerald", 145, 0.85),
    DemoClass("Peridot", "emerald", 88, 0.85),
    DemoClass("Sapphire Blue", "cushion", 222, 0.90),
    DemoClass("Tanzanite", "cushion", 250, 0.70),
    DemoClass("Amethyst", "pear", 282, 0.70),
    DemoClass("Diamond", "pear", 200, 0.06),
)

MARKER = ".demo-complete.json"


def _outline(cut: str, points: int = 24) -> np.ndarray:
    """Unit-size outline of a cut as (points, 2) x/y coordinates."""
    t = np.linspace(0, 2 * math.pi, points, endpoint=False)
    if cut == "round":
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if cut == "oval":
        return np.stack([np.cos(t), 0.72 * np.sin(t)], axis=1)
    if cut == "emerald":
        corner = 0.28  # an octagon: a rectangle with cut corners
        x, y = 1.0, 0.7
        return np.array(
            [
                (x - corner, -y),
                (x, -y + corner),
                (x, y - corner),
                (x - corner, y),
                (-x + corner, y),
                (-x, y - corner),
                (-x, -y + corner),
                (-x + corner, -y),
            ]
        )
    if cut == "cushion":  # a superellipse: a square with rounded corners
        c, s = np.cos(t), np.sin(t)
        return np.stack([np.sign(c) * np.abs(c) ** 0.5, np.sign(s) * np.abs(s) ** 0.5], axis=1) * 0.85
    if cut == "pear":
        radius = 0.75 + 0.45 * np.clip(np.cos(t), 0, None) ** 3
        return np.stack([radius * np.cos(t), 0.8 * radius * np.sin(t)], axis=1)
    raise ValueError(f"unknown cut {cut!r}")


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((hue % 360) / 360, min(max(saturation, 0), 1), min(max(value, 0), 1))
    return int(r * 255), int(g * 255), int(b * 255)


def render_stone(spec: DemoClass, size: int, rng: np.random.Generator) -> Image.Image:
    """One stone: outline facets, a brighter table, a highlight, at random scale, rotation and place."""
    scale = 2  # draw at twice the size and downsample, for anti-aliased edges
    canvas = size * scale
    image = Image.new("RGB", (canvas, canvas), (0, 0, 0))
    draw = ImageDraw.Draw(image)

    hue = spec.hue + rng.normal(0, 3)
    saturation = spec.saturation * rng.uniform(0.9, 1.05)
    angle = rng.uniform(0, 2 * math.pi)
    radius = canvas * rng.uniform(0.28, 0.40)
    centre = canvas / 2 + rng.uniform(-0.08, 0.08, size=2) * canvas
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])

    def place(points: np.ndarray) -> list[tuple[float, float]]:
        return [tuple(p) for p in (points @ rotation.T) * radius + centre]

    outline = _outline(spec.cut)
    table = outline * 0.5
    light = rng.uniform(0, 2 * math.pi)
    for i in range(len(outline)):
        j = (i + 1) % len(outline)
        # Facet brightness follows a light direction plus noise, as light breaks on a real stone.
        facing = math.cos(math.atan2(*outline[i][::-1]) - light)
        value = 0.55 + 0.25 * facing + rng.normal(0, 0.08)
        draw.polygon(place(np.array([outline[i], outline[j], table[j], table[i]])), fill=_rgb(hue, saturation, value))
        draw.polygon(place(np.array([table[i], table[j], [0, 0]])), fill=_rgb(hue, saturation * 0.9, value + 0.2))
    draw.polygon(place(table * 0.6), fill=_rgb(hue, saturation * 0.8, 0.95))
    glint = place(np.array([[rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3)]]))[0]
    glint_radius = canvas * 0.025
    draw.ellipse(
        [glint[0] - glint_radius, glint[1] - glint_radius, glint[0] + glint_radius, glint[1] + glint_radius],
        fill=(255, 255, 255),
    )
    image = image.filter(ImageFilter.GaussianBlur(radius=scale * 0.6)).resize((size, size), Image.LANCZOS)
    noise = rng.normal(0, 3, size=(size, size, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


@dataclass(frozen=True)
class DemoGemSet:
    """Renders ``images_per_class`` PNGs per class into ``root/<class>/`` once; later calls do nothing."""

    images_per_class: int = 60
    image_size: int = 96
    seed: int = 0
    num_classes: int = len(DEMO_CLASSES)

    def render(self, root: Path) -> Path:
        root = Path(root)
        if self._rendered(root):
            return root
        if not 1 <= self.num_classes <= len(DEMO_CLASSES):
            raise ValueError(f"num_classes must be between 1 and {len(DEMO_CLASSES)}")
        root.parent.mkdir(parents=True, exist_ok=True)
        # Sweep workers starting together would otherwise each render and swap the folder under the
        # others' feet; with the lock one renders and the rest find it done.
        with exclusive_lock(root.parent / f".{root.name}.lock"):
            if not self._rendered(root):
                self._render_into(root)
        return root

    def _rendered(self, root: Path) -> bool:
        marker = root / MARKER
        return marker.is_file() and json.loads(marker.read_text()) == asdict(self)

    def _render_into(self, root: Path) -> None:
        # Render beside the target and swap it in whole, so an interrupted render never looks complete.
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        try:
            for class_index, spec in enumerate(DEMO_CLASSES[: self.num_classes]):
                folder = staging / spec.name
                folder.mkdir()
                rng = np.random.default_rng([self.seed, class_index])
                for i in range(self.images_per_class):
                    stem = spec.name.lower().replace(" ", "_")
                    render_stone(spec, self.image_size, rng).save(folder / f"{stem}_{i:03d}.png")
            (staging / MARKER).write_text(json.dumps(asdict(self)))
            if root.exists():
                shutil.rmtree(root)
            staging.rename(root)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
