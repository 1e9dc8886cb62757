"""Property-based fuzzing of the mask checks, run by tests/test_hostile_inputs.py in a subprocess under a memory
limit, so that a crash of pycocotools' C decoder fails that test instead of killing the test run.

    python tests/fuzz_segmentation.py EXAMPLES

Every polygon or RLE, well-formed or not, must give either ``InputFileError`` or a mask of the photo's size that
is the same on a second decode and, for RLE run lengths, equal to the runs laid out by numpy.
"""

from __future__ import annotations

import sys

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roi_attention.data.inputs import InputFileError, compressed_counts, decode_segmentation

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
    limit = settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    for fuzz in (fuzz_polygons, fuzz_uncompressed_rle, fuzz_compressed_rle, fuzz_valid_rle_round_trip):
        limit(fuzz)()
        print(f"{fuzz.__name__}: {examples} examples, no crash, every answer a clear error or the right mask")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
