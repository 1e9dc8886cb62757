"""COCO instances as regions: ROI = one instance mask, label = its category (read with pycocotools)."""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from ..labels import COCO_CATEGORY_IDS, COCO_CLASSES
from .build import BuildReport, ImageResult, photo_result, region_row
from .inputs import InputFileError, inside_folder, open_image, segmentation_rle


def read_photo_file(path: Path, report: BuildReport, what: str) -> tuple[bytes, int, int] | None:
    """The file bytes and (width, height) of a photo that decodes completely within the pixel limit, else None
    (recorded in report)."""
    if not path.is_file():
        report.skip("image file missing", what)
        return None
    try:
        with open_image(path, f"photo {what}") as image:
            width, height = image.size
    except InputFileError as error:
        report.skip("image file unreadable, truncated or too large", str(error))
        return None
    return path.read_bytes(), width, height


@dataclass
class CocoRegions:
    """Regions of a COCO instances file. ``categories``: ``"coco80"`` (the 80 standard classes in
    ``getCatIds()`` order; other ids are skipped) or ``"file"`` (the file's own categories by id)."""

    images_dir: Path
    annotations: Path
    keep_crowd: bool = False
    categories: str = "coco80"
    class_names: list[str] = field(init=False)
    _coco: COCO | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.images_dir, self.annotations = Path(self.images_dir), Path(self.annotations)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"images folder {self.images_dir} does not exist")
        if not self.annotations.is_file():
            raise FileNotFoundError(f"annotations file {self.annotations} does not exist")
        if self.categories == "coco80":
            self.category_ids = list(COCO_CATEGORY_IDS)
            self.class_names = list(COCO_CLASSES)
        elif self.categories == "file":
            with open(self.annotations) as handle:
                cats = sorted(json.load(handle).get("categories", []), key=lambda c: c["id"])
            if not cats:
                raise ValueError(f"{self.annotations} declares no categories")
            self.category_ids = [c["id"] for c in cats]
            self.class_names = [c["name"] for c in cats]
        else:
            raise ValueError(f"categories must be 'coco80' or 'file', got {self.categories!r}")
        self.label_of = {cat_id: index for index, cat_id in enumerate(self.category_ids)}

    @property
    def description(self) -> str:
        crowd = "crowd annotations kept" if self.keep_crowd else "crowd annotations skipped"
        classes = "the 80 standard COCO classes" if self.categories == "coco80" else "the file's own categories"
        return (
            f"COCO-format instances from `{self.annotations.name}`, one region per instance mask, {classes}, {crowd}."
        )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_coco": None}  # each worker indexes the file itself

    @property
    def coco(self) -> COCO:
        if self._coco is None:
            self._coco, _ = self._load(BuildReport())
        return self._coco

    def _load(self, report: BuildReport) -> tuple[COCO, list[int]]:
        with open(self.annotations) as handle:
            dataset = json.load(handle)
        for key in ("images", "annotations"):
            if not isinstance(dataset.get(key), list):
                raise ValueError(f"{self.annotations} is not a COCO instances file: no '{key}' list")
        dataset["images"] = _first_of_each_id(dataset["images"], "duplicate image id", report)
        dataset["annotations"] = _first_of_each_id(dataset["annotations"], "duplicate annotation id", report)
        coco = COCO()
        coco.dataset = dataset
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # pycocotools prints
            coco.createIndex()
        return coco, [image["id"] for image in dataset["images"]]

    def tasks(self, report: BuildReport) -> list[int]:
        self._coco, image_ids = self._load(report)
        return image_ids

    def process(self, image_id: int) -> ImageResult:
        report = BuildReport()
        info = self.coco.imgs[image_id]
        name = info.get("file_name", str(image_id))
        annotations = self.coco.imgToAnns.get(image_id, [])
        try:
            path = inside_folder(self.images_dir, name, f"image {image_id}")
        except InputFileError as error:
            report.skip("file_name outside the images folder", str(error), max(1, len(annotations)))
            return ImageResult(None, [], report)
        photo = read_photo_file(path, report, name)
        if photo is None:
            if annotations:
                report.skip("region of a skipped image", annotations[0]["id"], len(annotations))
            return ImageResult(None, [], report)
        data, width, height = photo
        if (info.get("width"), info.get("height")) != (width, height):
            report.skip("image size differs from the annotations file", f"{name} {width}x{height}")
            return ImageResult(None, [], report)
        regions = []
        for ann in annotations:
            row = self._region(ann, width, height, report)
            if row is not None:
                regions.append(row)
        return photo_result(image_id, name, data, (width, height), regions, report)

    def _region(self, ann: dict[str, Any], width: int, height: int, report: BuildReport) -> dict[str, Any] | None:
        ann_id = ann.get("id")
        if ann.get("iscrowd", 0) and not self.keep_crowd:
            report.skip("crowd annotation (keep_crowd=False)", ann_id)
            return None
        if ann.get("category_id") not in self.label_of:
            report.skip("unknown category id", f"{ann_id} (category {ann.get('category_id')})")
            return None
        segmentation = ann.get("segmentation")
        if not segmentation:
            report.skip("no segmentation", ann_id)
            return None
        if isinstance(segmentation, dict) and segmentation.get("size") != [height, width]:
            report.skip("mask size differs from the image", f"{ann_id} {str(segmentation.get('size'))[:40]}")
            return None
        try:
            rle = segmentation_rle(segmentation, (height, width), f"annotation {ann_id}")
        except InputFileError as error:
            report.skip("malformed segmentation", str(error))
            return None
        counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
        stored = {"size": [int(s) for s in rle["size"]], "counts": counts}
        label = self.label_of[ann["category_id"]]
        row = region_row(ann_id, ann["image_id"], label, stored, bool(ann.get("iscrowd", 0)))
        if row is None:
            x, y, w, h = (ann.get("bbox") or [0, 0, 0, 0])[:4]
            inside = x < width and y < height and x + w > 0 and y + h > 0
            report.skip("empty mask" if inside else "mask outside the image", ann_id)
        return row


def _first_of_each_id(items: list[dict[str, Any]], reason: str, report: BuildReport) -> list[dict[str, Any]]:
    counts = Counter(item.get("id") for item in items)
    seen: set[Any] = set()
    kept = []
    for item in items:
        if counts[item.get("id")] > 1 and item.get("id") in seen:
            report.skip(reason, item.get("id"))
            continue
        seen.add(item.get("id"))
        kept.append(item)
    return kept
