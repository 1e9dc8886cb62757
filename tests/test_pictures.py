"""The pictures people read: regions drawn at any photo size, and accuracy by size with its counts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from roi_attention.metrics.report import FEW_REGIONS, accuracy_by_size_figure, plot_accuracy_by_size, wilson_interval
from roi_attention.predict import (
    DISPLAY_LONG_SIDE,
    LEGEND_FONT_PX,
    LEGEND_MARGIN,
    LEGEND_ROW_HEIGHT,
    MIN_PICTURE_WIDTH,
    _label_point,
    region_colours,
    render_predictions,
)


def _predictions(count: int) -> list[list[dict]]:
    return [[dict(label=f"label {i}", probability=0.9), dict(label="other", probability=0.1)] for i in range(count)]


@pytest.mark.parametrize("size", [(64, 64), (480, 640), (3000, 4000)])
def test_any_photo_is_drawn_at_a_readable_size_with_a_legend_below_it(size):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    masks = []
    for number in range(8):  # eight regions in a row, as a COCO photo has
        mask = np.zeros(size, bool)
        step = size[1] // 8
        mask[size[0] // 3 : 2 * size[0] // 3, number * step + step // 4 : (number + 1) * step - step // 4] = True
        masks.append(mask)
    picture = render_predictions(photo, masks, _predictions(8))
    scale = DISPLAY_LONG_SIDE / max(size)
    width = max(round(size[1] * scale), MIN_PICTURE_WIDTH)
    assert picture.size == (width, round(size[0] * scale) + 2 * LEGEND_MARGIN + LEGEND_ROW_HEIGHT * 8)
    # Away from outlines and numbers, the photo is the photo scaled (nearest pixel when enlarged).
    x, y = 2 + (width - round(size[1] * scale)) // 2, 2
    source = photo[int((y + 0.5) / scale), int((x + 0.5) / scale)] if scale > 1 else None
    if source is not None:
        np.testing.assert_array_equal(np.asarray(picture)[y, x], source)


@pytest.mark.parametrize("size", [(800, 200), (480, 640)])
def test_long_class_names_end_in_an_ellipsis_inside_the_picture_and_the_text_is_large(size):
    photo = np.full((*size, 3), 128, np.uint8)
    mask = np.zeros(size, bool)
    mask[10:50, 10:50] = True
    long = "punching bag, punch bag, punching ball, punchball, " * 4
    ranked = [dict(label=long, probability=0.27), dict(label=long, probability=0.08), dict(label="x", probability=0.01)]
    picture = np.asarray(render_predictions(photo, [mask, mask], [ranked, ranked]))
    legend = picture[picture.shape[0] - 2 * LEGEND_MARGIN - 2 * LEGEND_ROW_HEIGHT :]
    ink = (legend < 200).any(axis=2)  # dark pixels: text
    columns = np.flatnonzero(ink.any(axis=0))
    assert columns.max() < picture.shape[1] - 8, "a legend line runs off the picture"
    assert columns.max() > picture.shape[1] - 120, "the long name was cut far shorter than the room it has"
    rows = np.flatnonzero(ink[:, 44:].any(axis=1))  # the text lines, right of the numbers
    first_line = rows[rows < LEGEND_MARGIN + 30]
    assert first_line.max() - first_line.min() >= 0.6 * LEGEND_FONT_PX[0]  # glyphs of the stated size
    assert min(LEGEND_FONT_PX) * 600 / DISPLAY_LONG_SIDE >= 12  # readable on a page that shows 600 px of it


def test_regions_get_distinct_colours_and_numbers_inside_them():
    for count in (3, 8, 14, 30):
        colours = region_colours(count)
        assert len({tuple(np.round(c, 3)) for c in colours}) == count
    ring = np.zeros((100, 100), bool)  # a C shape: its centroid is outside it
    ring[10:90, 10:30] = ring[10:30, 10:90] = ring[70:90, 10:90] = True
    x, y = _label_point(ring)
    assert ring[int(y), int(x)] and not ring[50, 50]


def test_wilson_interval_matches_the_hand_computed_values():
    # Wilson (1927) 95% intervals: 0 of 3 -> [0, 0.5615]; 8 of 10 -> [0.4902, 0.9433].
    assert wilson_interval(0, 3) == pytest.approx((0.0, 0.5615), abs=1e-4)
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    low, high = wilson_interval(443 * 0.62, 443)
    assert high - low < 0.1  # a large bin is pinned down


def test_the_size_plot_leaves_out_empty_bins_and_marks_small_ones(tmp_path):
    from matplotlib.collections import PathCollection

    counts = {"0-1000": 443, "1000-2000": 3, "2000-4000": 0, "4000-8000": FEW_REGIONS}
    bins = [
        dict(bin=name, num_regions=n, pooled_accuracy=0.5 if n else None, mean_class_accuracy=0.5 if n else None)
        for name, n in counts.items()
    ]
    results = {"models": {"m": {"metrics": {"size_bins": bins}}}}
    axis = accuracy_by_size_figure(results).axes[1]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["0-1000\nn=443", "1000-2000\nn=3", "4000-8000\nn=30"]
    points = [c for c in axis.collections if isinstance(c, PathCollection)]
    hollow = [tuple(np.round(p.get_facecolors()[0], 2)) == (1.0, 1.0, 1.0, 1.0) for p in points]
    assert hollow == [False, True, False]
    sizes = [float(p.get_sizes()[0]) for p in points]
    assert sizes[0] > sizes[2] > sizes[1]
    plot_accuracy_by_size(results, tmp_path / "plot.png")
    with Image.open(tmp_path / "plot.png") as image:
        assert image.width > 1000


def test_drawing_leaves_the_callers_matplotlib_as_it_was(tmp_path):
    """A notebook's backend and open figures survive render_predictions and the size plot (no pyplot inside)."""
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    plt.switch_backend("svg")  # a backend of the caller's, not the Agg the pictures are drawn with
    try:
        figure = plt.figure()
        mask = np.zeros((64, 64), bool)
        mask[10:30, 20:40] = True
        picture = render_predictions(np.zeros((64, 64, 3), np.uint8), [mask], _predictions(1))
        bins = [dict(bin="0-1000", num_regions=40, pooled_accuracy=0.5, mean_class_accuracy=0.4)]
        plot_accuracy_by_size({"models": {"m": {"metrics": {"size_bins": bins}}}}, tmp_path / "plot.png")
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == [figure.number]
        assert picture.size[0] > 64 and (tmp_path / "plot.png").stat().st_size > 10_000
    finally:
        plt.close("all")
        plt.switch_backend(before)


def test_a_rendered_picture_leaves_nothing_for_the_cyclic_collector():
    """The app renders a picture a request, in worker threads where the cyclic collector runs seldom: a figure's
    arrays held in its reference cycles piled up (375 MB after three 2000x2000 renders here; 0.4 GB a 16 Mpx
    request in the app)."""
    import gc
    import tracemalloc

    photo = np.zeros((2000, 2000, 3), np.uint8)
    masks = []
    for index in range(8):
        mask = np.zeros((2000, 2000), np.uint8)
        mask[200 * index : 200 * index + 150, 100:600] = 1
        masks.append(mask)
    predictions = [[dict(label="a", index=0, probability=1.0)]] * len(masks)
    render_predictions(photo, masks, predictions)  # imports and font caches first
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        for _ in range(3):
            render_predictions(photo, masks, predictions)
        held_mb = tracemalloc.get_traced_memory()[0] / 2**20
    finally:
        tracemalloc.stop()
        gc.enable()
    assert held_mb < 20, held_mb
