"""ROI size bins (pixels of the region in the original image): the paper's, or edges of your own."""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Sequence

# Bin edges of the paper's Tables 1-4; regions above the last edge fold into the last bin, as the author did.
SIZE_BIN_EDGES: tuple[int, ...] = (0, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 500000, 1000000)
COCO_PHOTO_AREA = 640 * 480  # the photo size the paper's edges are meant for


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def bin_names(edges: Sequence[float] = SIZE_BIN_EDGES) -> tuple[str, ...]:
    """``"lo-hi"`` for each bin of ``edges``."""
    return tuple(f"{_number(lo)}-{_number(hi)}" for lo, hi in itertools.pairwise(edges))


SIZE_BIN_NAMES: tuple[str, ...] = bin_names(SIZE_BIN_EDGES)


def size_bin(area: float, edges: Sequence[float] = SIZE_BIN_EDGES) -> int:
    """Index of the size bin of a region of ``area`` pixels: ``[lo, hi)``, larger regions in the last bin."""
    if area < 0:
        raise ValueError(f"a region's area cannot be negative, got {area}")
    return min(max(bisect.bisect_right(edges, area) - 1, 0), len(edges) - 2)


def parse_size_bins(spec: str) -> tuple[float, ...]:
    """Bin edges from ``spec``: ``paper`` (the paper's), ``scaled:WxH`` (the paper's scaled by the area of a
    WxH image relative to a 640x480 COCO photo, for smaller images) or explicit increasing edges ``0,50,200``."""
    spec = spec.strip()
    if spec == "paper":
        return SIZE_BIN_EDGES
    scaled = re.fullmatch(r"scaled:(\d+)x(\d+)", spec)
    if scaled:
        factor = int(scaled[1]) * int(scaled[2]) / COCO_PHOTO_AREA
        return tuple(round(edge * factor, 1) for edge in SIZE_BIN_EDGES)
    try:
        edges = tuple(float(e) for e in spec.split(","))
    except ValueError:
        edges = ()
    if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)) or edges[0] < 0:
        raise ValueError(
            f"size bins {spec!r}: expected 'paper', 'scaled:WxH' (e.g. scaled:96x96) or two or more increasing "
            "edges in pixels from 0 up, e.g. 0,50,200,800"
        )
    return tuple(int(e) if e.is_integer() else e for e in edges)
