"""OpenSurfaces material regions in the paper author's label-map format.

``Images/NAME.jpg`` beside ``Annotations/NAME.png``; a label-map pixel holds the material index (1..44),
0 = unlabelled. A region is one 8-connected component of one material with at least ``min_area`` pixels
(default 64, an 8x8 patch: smaller specks are mostly annotation noise); its label is the material index - 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..labels import OPENSURFACES_MATERIALS
from .build import BuildReport, ImageResult, encode_mask, photo_result, region_row
from .coco import read_photo_file
from .inputs import InputFileError, open_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
DEFAULT_MIN_AREA = 64


@dataclass
class OpenSurfacesRegions:
    """Regions of an OpenSurfaces folder pair: photos in ``images_dir``, label maps in ``labels_dir``."""

    images_dir: Path
    labels_dir: Path
    min_area: int = DEFAULT_MIN_AREA
    class_names: list[str] = field(default_factory=lambda: list(OPENSURFACES_MATERIALS))

    def __post_init__(self) -> None:
        self.images_dir, self.labels_dir = Path(self.images_dir), Path(self.labels_dir)
        for folder in (self.images_dir, self.labels_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"folder {folder} does not exist")
        if self.min_area < 1:
            raise ValueError(f"min_area must be at least 1 pixel, got {self.min_area}")

    @property
    def description(self) -> str:
        return (
            "OpenSurfaces label maps in the paper author's format (pixel value = material index, 0 = unlabelled), "
            f"one region per 8-connected component of one material of at least {self.min_area} pixels."
        )

    def tasks(self, report: BuildReport) -> list[tuple[int, str]]:
        photos = sorted(p.name for p in self.images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return list(enumerate(photos))

    def process(self, task: tuple[int, str]) -> ImageResult:
        image_id, name = task
        report = BuildReport()
        label_path = self.labels_dir / f"{Path(name).stem}.png"
        if not label_path.is_file():
            report.skip("label map missing", name)
            return ImageResult(None, [], report)
        photo = read_photo_file(self.images_dir / name, report, name)
        if photo is None:
            return ImageResult(None, [], report)
        data, width, height = photo
        try:
            with open_image(label_path, f"label map {label_path.name}") as label_image:
                labels = np.asarray(label_image)
        except InputFileError as error:
            report.skip("label map unreadable, truncated or too large", str(error))
            return ImageResult(None, [], report)
        if labels.ndim != 2 or labels.shape != (height, width):
            report.skip("label map size differs from the photo", f"{label_path.name} {labels.shape}")
            return ImageResult(None, [], report)
        regions = []
        for value in np.unique(labels):
            if value == 0:
                continue
            if not 1 <= value <= len(self.class_names):
                report.skip("unknown material index", f"{name} value {value}")
                continue
            components, count = ndimage.label(labels == value, structure=EIGHT_CONNECTED)
            areas = np.bincount(components.ravel(), minlength=count + 1)
            for component in range(1, count + 1):
                if areas[component] < self.min_area:
                    report.skip(f"region smaller than min_area={self.min_area}", f"{name} material {value}")
                    continue
                region_id = image_id * 100_000 + len(regions)
                row = region_row(region_id, image_id, int(value) - 1, encode_mask(components == component))
                regions.append(row)
        return photo_result(image_id, name, data, (width, height), regions, report)
