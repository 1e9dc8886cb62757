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


# Outlines drawn by hand on scikit-image's other photos: each example of the app comes with its regions.
PHOTO_REGIONS: dict[str, dict[str, list[tuple[int, int]]]] = {
    "coffee": COFFEE_REGIONS,
    "chelsea": {  # 451x300
        "eye": [(135, 95), (170, 82), (200, 95), (207, 120), (195, 142), (165, 148), (140, 135), (133, 115)],
        "nose": [(235, 228), (270, 222), (292, 232), (285, 250), (265, 262), (245, 250)],
    },
    "astronaut": {  # 512x512
        "helmet": [(285, 390), (320, 360), (370, 345), (420, 345), (465, 365), (495, 400), (500, 450), (490, 511),
                   (280, 511), (278, 450)],
        "shuttle": [(395, 5), (415, 0), (430, 30), (435, 70), (445, 150), (450, 210), (470, 255), (460, 275),
                    (370, 275), (360, 220), (385, 195), (392, 100), (395, 40)],
        "flag": [(0, 0), (40, 0), (80, 110), (95, 200), (90, 250), (40, 260), (0, 270)],
    },
    "rocket": {  # 640x427
        "rocket": [(312, 140), (322, 127), (333, 140), (335, 200), (333, 400), (310, 400), (307, 200)],
        "tower": [(440, 125), (450, 125), (455, 200), (470, 400), (430, 400), (440, 200)],
    },
}  # fmt: skip


def polygon_mask(polygon: list[tuple[int, int]], size: tuple[int, int]) -> np.ndarray:
    """A ``(H,W)`` uint8 0/1 mask of ``polygon`` in an image of ``size`` = (width, height)."""
    canvas = Image.new("L", size, 0)
    ImageDraw.Draw(canvas).polygon(polygon, fill=1, outline=1)
    return np.asarray(canvas)
