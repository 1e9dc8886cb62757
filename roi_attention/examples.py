"""An example photo with region masks, from scikit-image's bundled photographs (nothing downloaded)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# Outlines (x, y) drawn by hand around objects of scikit-image's ``coffee()`` photo (600x400).
COFFEE_REGIONS: dict[str, list[tuple[int, int]]] = {
    "cup": [
        (175, 95),
        (200, 45),
        (250, 22),
        (330, 22),
        (385, 45),
        (408, 95),
        (405, 160),
        (390, 210),
        (360, 240),
        (330, 255),
        (300, 262),
        (260, 290),
        (230, 305),
        (200, 300),
        (195, 265),
        (215, 235),
        (190, 200),
        (175, 150),
    ],
    "spoon": [
        (400, 65),
        (422, 75),
        (410, 140),
        (395, 230),
        (405, 260),
        (405, 300),
        (385, 322),
        (350, 325),
        (328, 300),
        (330, 265),
        (355, 240),
        (375, 225),
        (385, 140),
        (398, 70),
    ],
}


def polygon_mask(polygon: list[tuple[int, int]], size: tuple[int, int]) -> np.ndarray:
    """A ``(H,W)`` uint8 0/1 mask of ``polygon`` in an image of ``size`` = (width, height)."""
    canvas = Image.new("L", size, 0)
    ImageDraw.Draw(canvas).polygon(polygon, fill=1, outline=1)
    return np.asarray(canvas)
