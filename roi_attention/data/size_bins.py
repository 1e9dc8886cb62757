"""The paper's ROI size bins (pixels of the region in the original image)."""

from __future__ import annotations

import bisect
import itertools

# Bin edges of the paper's Tables 1-4; regions above the last edge fold into the last bin, as the author did.
SIZE_BIN_EDGES: tuple[int, ...] = (0, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 500000, 1000000)
SIZE_BIN_NAMES: tuple[str, ...] = tuple(f"{lo}-{hi}" for lo, hi in itertools.pairwise(SIZE_BIN_EDGES))


def size_bin(area: float) -> int:
    """Index of the size bin of a region of ``area`` pixels: ``[lo, hi)``, larger regions in the last bin."""
    if area < 0:
        raise ValueError(f"a region's area cannot be negative, got {area}")
    return min(bisect.bisect_right(SIZE_BIN_EDGES, area) - 1, len(SIZE_BIN_NAMES) - 1)
