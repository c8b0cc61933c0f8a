"""Frame the stone: the square around a cut-out's mask, so every photo shows the stone at the same size.

``background.frame=stone`` crops each cut-out to the square that holds its mask plus ``margin`` of the stone's
size on every side (the area outside the photo filled with the background colour), at training and at
prediction time alike. A stone that fills 5 % of a table-top photo and one that fills a dealer's studio shot
then reach the network at the same scale. The square is cut from a copy of the photo decoded at up to
``DETAIL_FACTOR`` times ``max_side``, so a small stone in a large frame keeps its detail.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

FRAMES = ("whole", "stone")
# How much larger than max_side the photo is decoded when the stone is framed: a stone 1/4 of the frame's
# width still reaches max_side pixels.
DETAIL_FACTOR = 4


def stone_pixels(mask: np.ndarray) -> np.ndarray:
    """Which pixels of a uint8 mask are stone: those at or above half, the one rule for a soft mask's edge
    (the mask check and the framing both count by it)."""
    return mask >= 128


def stone_square(mask: np.ndarray, margin: float) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the square around the mask's stone pixels, widened by
    ``margin`` times the stone's longer side on each side; None for an empty mask."""
    rows, columns = np.nonzero(stone_pixels(mask))
    if rows.size == 0:
        return None
    top, bottom, left, right = rows.min(), rows.max() + 1, columns.min(), columns.max() + 1
    side = max(right - left, bottom - top) * (1 + 2 * margin)
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    x0, y0 = round(centre_x - side / 2), round(centre_y - side / 2)
    return x0, y0, x0 + round(side), y0 + round(side)


def framed_on_stone(cut_out: Image.Image, mask: np.ndarray, margin: float, fill: tuple[int, int, int]) -> Image.Image:
    """``cut_out`` cropped to the stone's square; parts of the square beyond the photo are ``fill``."""
    box = stone_square(mask, margin)
    if box is None:
        return cut_out
    left, top, right, bottom = box
    canvas = Image.new("RGB", (right - left, bottom - top), fill)
    canvas.paste(cut_out, (-left, -top))
    return canvas
