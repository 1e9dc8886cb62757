"""Shared timing helpers: medians over repeats after warm-up, the compared pair interleaved run by run."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def machine() -> str:
    """One line describing where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    capability = torch.backends.cpu.get_cpu_capability()  # the vector instructions torch's CPU kernels use
    return f"{cpu} ({capability}), {torch.get_num_threads()} threads, torch {torch.__version__}"


def paired_medians(functions: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each function, the functions interleaved in every repeat so drift hits all alike."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def paired_ratios(
    functions: dict[str, Callable[[], object]], reference: str, rounds: int = 15, warmup: int = 2, seed: int = 0
) -> dict[str, list[float]]:
    """Each function's time over the ``reference`` function's, one ratio per round; every round runs all of them
    once, in a random order, so drift and the order's own effect fall on all alike."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    rng = np.random.default_rng(seed)
    names = list(functions)
    ratios: dict[str, list[float]] = {name: [] for name in names if name != reference}
    for _ in range(rounds):
        times = {}
        for index in rng.permutation(len(names)):
            start = time.perf_counter()
            functions[names[index]]()
            times[names[index]] = time.perf_counter() - start
        for name in ratios:
            ratios[name].append(times[name] / times[reference])
    return ratios


def median_interval(values: list[float], confidence: float = 0.95, resamples: int = 4000, seed: int = 0) -> tuple:
    """The median of ``values`` and a bootstrap percentile interval for it: ``(median, low, high)``."""
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(data, size=(resamples, data.size), replace=True), axis=1)
    tail = 100 * (1 - confidence) / 2
    return float(np.median(data)), float(np.percentile(medians, tail)), float(np.percentile(medians, 100 - tail))


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """A practical peak: GFLOP/s of a large float32 matmul on this machine."""
    a = torch.randn(size, size)
    seconds = paired_medians({"mm": lambda: a @ a}, repeats=repeats, warmup=1)["mm"]
    return 2 * size**3 / seconds / 1e9


# scikit-image's photos int8 calibrates on (the app's hand-drawn regions and random boxes); the measured regions
# come from other photos only: the COCO and OpenSurfaces fixtures, imgaug's quokka and the rest of these.
CALIBRATION_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "camera")
MEASURED_PHOTOS = ("cat", "hubble_deep_field", "retina", "coins", "clock", "moon", "cell")


def random_boxes(height: int, width: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` box masks, sides log-uniform from 10% to 80% of the photo's, aspect within 0.6-1.4."""
    masks = []
    for _ in range(count):
        side = np.exp(rng.uniform(np.log(0.1), np.log(0.8)))
        box_h = min(height, max(4, int(height * side * rng.uniform(0.6, 1.4))))
        box_w = min(width, max(4, int(width * side * rng.uniform(0.6, 1.4))))
        top, left = rng.integers(0, height - box_h + 1), rng.integers(0, width - box_w + 1)
        mask = np.zeros((height, width), bool)
        mask[top : top + box_h, left : left + box_w] = True
        masks.append(mask)
    return masks


Photos = list[tuple[np.ndarray, list[np.ndarray]]]


def real_region_sets(fixtures: Path, boxes: int = 12, seed: int = 0) -> tuple[Photos, Photos]:
    """Regions of real photos as ``(photo, masks)`` pairs, calibration and measured sets from disjoint photos:
    calibration: ``CALIBRATION_PHOTOS`` with their hand-drawn regions and ``boxes`` random boxes each; measured:
    the COCO fixture's instance masks, the OpenSurfaces fixture's materials (>= 0.5% of the photo), imgaug's quokka
    and ``MEASURED_PHOTOS``, each with ``boxes`` random boxes (about 80 and 230 regions)."""
    import importlib.util

    from skimage import data

    from roi_attention.data.inputs import read_author_samples, read_photo
    from roi_attention.examples import PHOTO_REGIONS, polygon_mask

    rng = np.random.default_rng(seed)

    def scikit_photo(name: str) -> np.ndarray:
        photo = getattr(data, name)()
        return np.ascontiguousarray(np.stack([photo] * 3, -1) if photo.ndim == 2 else photo[..., :3])

    calibration = []
    for name in CALIBRATION_PHOTOS:
        photo = scikit_photo(name)
        height, width = photo.shape[:2]
        drawn = [polygon_mask(polygon, (width, height)) for polygon in PHOTO_REGIONS.get(name, {}).values()]
        calibration.append((photo, drawn + random_boxes(height, width, boxes, rng)))
    measured = []
    for photo, masks in read_author_samples(fixtures / "coco_example"):
        measured.append((photo, list(masks) + random_boxes(*photo.shape[:2], boxes, rng)))
    surfaces = fixtures / "opensurfaces_example" / "TrainVal_Set"
    for path in sorted((surfaces / "Images").glob("*.jpg")):
        photo = read_photo(path, as_displayed=False)
        labels = read_photo(surfaces / "Annotations" / f"{path.stem}.png", as_displayed=False)[..., 0]
        materials = [labels == value for value in np.unique(labels) if value and (labels == value).mean() >= 0.005]
        measured.append((photo, materials + random_boxes(*photo.shape[:2], boxes, rng)))
    spec = importlib.util.find_spec("imgaug")
    if spec is not None and spec.submodule_search_locations:
        quokka = Path(spec.submodule_search_locations[0]) / "quokka.jpg"
        if quokka.is_file():
            photo = read_photo(quokka)
            measured.append((photo, random_boxes(*photo.shape[:2], boxes, rng)))
    for name in MEASURED_PHOTOS:
        photo = scikit_photo(name)
        measured.append((photo, random_boxes(*photo.shape[:2], boxes, rng)))
    return calibration, measured
