"""Property-based fuzzing of the mask checks, run by tests/test_hostile_inputs.py in a subprocess under a memory
limit, so that a crash of pycocotools' C decoder fails that test instead of killing the test run.

    python tests/fuzz_segmentation.py EXAMPLES

Every polygon or RLE, well-formed or not, must give either ``InputFileError`` or a mask of the photo's size that
is the same on a second decode and, for RLE run lengths, equal to the runs laid out by numpy; a valid polygon's mask
is scikit-image's rasterisation of it (pixel centres inside, even-odd) except within half a pixel of its outline,
on photos up to 2048 pixels a side; the caps on polygons and points hold exactly. Examples are derandomised: a run
is repeatable, and a failure prints the example and the blob that reproduces it (``@reproduce_failure``).
"""

from __future__ import annotations

import sys

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skimage.draw import polygon as fill_polygon

from roi_attention.data.inputs import MAX_POLYGONS, MAX_VERTICES, InputFileError, compressed_counts, decode_segmentation

SIZES = st.tuples(st.integers(1, 24), st.integers(1, 24))
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-60, 60),
    st.integers(-(10**30), 10**30),
    st.integers(-5, 40),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)
POLYGONS = st.lists(st.lists(NUMBERS, min_size=0, max_size=14), min_size=0, max_size=4)
COUNTS = st.lists(st.one_of(st.integers(-3, 600), st.integers(-(2**40), 2**40), st.floats(), st.text(max_size=2)))
STRINGS = st.one_of(
    st.text(max_size=30), st.binary(max_size=30), st.text(alphabet="0123456789:;<=>?@ABCabc", max_size=30)
)


def runs_mask(counts: list[int], height: int, width: int) -> np.ndarray:
    """The mask of COCO run lengths: alternating 0 and 1 runs over the column-major pixels."""
    values = np.repeat(np.arange(len(counts)) % 2, counts).astype(np.uint8)
    return values.reshape(width, height).T


def check(segmentation, size) -> None:
    try:
        mask = decode_segmentation(segmentation, size)
    except InputFileError:
        return
    assert mask.shape == size and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert np.array_equal(mask, decode_segmentation(segmentation, size)), "two decodes differ"
    if isinstance(segmentation, dict):  # pycocotools' decoder against the runs laid out here
        counts = segmentation["counts"]
        if not isinstance(counts, list):
            counts = compressed_counts(counts.encode("ascii") if isinstance(counts, str) else counts)
        assert np.array_equal(mask, runs_mask(counts, *size))


@given(SIZES, POLYGONS)
def fuzz_polygons(size, polygons) -> None:
    check(polygons, size)


LARGE_SIZES = st.tuples(st.integers(1, 2048), st.integers(1, 2048))
# pycocotools and scikit-image may disagree on a pixel whose centre is this close to the outline (measured: 0.29)
BOUNDARY = 0.5


def distance_to_outline(rows: np.ndarray, cols: np.ndarray, polygon: list[float]) -> np.ndarray:
    """The distance from each pixel centre to the nearest edge of the closed polygon."""
    points = np.array(polygon, float).reshape(-1, 2)
    start, end = points[None], np.roll(points, -1, axis=0)[None]
    centres = np.stack([cols + 0.5, rows + 0.5], axis=1)[:, None, :]
    edge = end - start
    t = np.clip(((centres - start) * edge).sum(-1) / np.maximum((edge * edge).sum(-1), 1e-12), 0, 1)
    return np.linalg.norm(centres - (start + t[..., None] * edge), axis=-1).min(axis=1)


@given(LARGE_SIZES, st.data())
def fuzz_valid_polygons_against_scikit_image(size, data) -> None:
    height, width = size
    point = st.tuples(st.floats(-width / 2, 1.5 * width), st.floats(-height / 2, 1.5 * height))
    polygon = st.lists(point, min_size=3, max_size=14)
    polygons = [[v for point in p for v in point] for p in data.draw(st.lists(polygon, min_size=1, max_size=4))]
    mask = decode_segmentation(polygons, size)
    expected = np.zeros(size, np.uint8)
    for p in polygons:  # a COCO pixel (r, c) spans [c, c+1) x [r, r+1): its centre is at (c + 0.5, r + 0.5)
        rows, cols = fill_polygon(np.array(p[1::2]) - 0.5, np.array(p[0::2]) - 0.5, size)
        expected[rows, cols] = 1
    rows, cols = np.nonzero(mask != expected)
    if len(rows):
        near = np.min([distance_to_outline(rows, cols, p) for p in polygons], axis=0)
        assert near.max() <= BOUNDARY, f"pixel {rows[near.argmax()], cols[near.argmax()]} differs, {near.max():.2f} in"


@given(st.integers(-2, 2), st.booleans())
def fuzz_the_caps_on_polygons_and_points(step, points) -> None:
    """MAX_POLYGONS triangles or MAX_VERTICES points are taken; one more is refused before pycocotools runs."""
    if points:
        angles = np.linspace(0, 2 * np.pi, MAX_VERTICES // MAX_POLYGONS, endpoint=False)
        polygon = [float(v) for a in angles for v in (4 + 3 * np.cos(a), 4 + 3 * np.sin(a))]  # a circle
        polygons = [list(polygon) for _ in range(MAX_POLYGONS)]
        polygons[0] += [1.0, 1.0] * step if step > 0 else []
        del polygons[0][len(polygons[0]) + 2 * step if step < 0 else len(polygons[0]) :]
        count, limit = sum(len(p) for p in polygons) // 2, MAX_VERTICES
    else:
        polygons = [[0.0, 0.0, 3.0, 0.0, 0.0, 3.0] for _ in range(MAX_POLYGONS + step)]
        count, limit = len(polygons), MAX_POLYGONS
    try:
        mask = decode_segmentation(polygons, (512, 512))  # outlines within their own cap
    except InputFileError as error:
        assert count > limit, f"{count} <= {limit} refused: {error}"
        return
    assert count <= limit and mask.any(), f"{count} > {limit} accepted"


@given(SIZES, COUNTS, st.booleans())
def fuzz_uncompressed_rle(size, counts, own_size) -> None:
    height, width = size
    if own_size and counts and all(isinstance(c, int) and c >= 0 for c in counts):  # near misses of the total
        counts = [*counts[:-1], max(0, height * width - sum(counts[:-1]))]
    check({"size": [height, width] if own_size else [width + 1, height], "counts": counts}, size)


@given(SIZES, STRINGS)
def fuzz_compressed_rle(size, counts) -> None:
    check({"size": list(size), "counts": counts}, size)


@given(SIZES, st.data())
def fuzz_valid_rle_round_trip(size, data) -> None:
    from pycocotools import mask as mask_utils

    height, width = size
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=height * width, max_size=height * width)), np.uint8)
    mask = mask.reshape(height, width)
    encoded = mask_utils.encode(np.asfortranarray(mask))
    assert np.array_equal(decode_segmentation({"size": [height, width], "counts": encoded["counts"]}, size), mask)
    truncated = encoded["counts"][: data.draw(st.integers(0, max(0, len(encoded["counts"]) - 1)))]
    check({"size": [height, width], "counts": truncated}, size)


def main(examples: int) -> int:
    limit = settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,
        print_blob=True,
    )
    fuzzes = (
        fuzz_polygons,
        fuzz_valid_polygons_against_scikit_image,
        fuzz_the_caps_on_polygons_and_points,
        fuzz_uncompressed_rle,
        fuzz_compressed_rle,
        fuzz_valid_rle_round_trip,
    )
    for fuzz in fuzzes:
        limit(fuzz)()
        print(f"{fuzz.__name__}: {examples} examples, no crash, every answer a clear error or the right mask")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
