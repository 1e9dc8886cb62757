"""Writing region datasets: parquet shards that ``datasets.load_dataset`` reads, built in a stream.

A region dataset folder holds two configs, ``images`` (every photo once, its original file bytes) and
``regions`` (one row per region: label, area, box, size bin, compressed RLE mask, ids), one parquet shard per
chunk of images, and a ``README.md`` whose front matter declares the configs and splits. A split appears only
when complete: it is written to a staging folder and moved into place, the README last.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from .card import IMAGES, REGIONS, dataset_metadata, read_dataset_info, write_dataset_card
from .inputs import decode_segmentation
from .size_bins import SIZE_BIN_NAMES, size_bin

ROWS_PER_GROUP = 64
SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def image_features() -> datasets.Features:
    return datasets.Features(
        {
            "image_id": datasets.Value("int64"),
            "file_name": datasets.Value("string"),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "image": datasets.Image(),
        }
    )


def region_features(class_names: Sequence[str]) -> datasets.Features:
    return datasets.Features(
        {
            "region_id": datasets.Value("int64"),
            "image_id": datasets.Value("int64"),
            "label": datasets.ClassLabel(names=list(class_names)),
            "area": datasets.Value("int64"),
            "bbox": datasets.Sequence(datasets.Value("float32"), length=4),
            "size_bin": datasets.ClassLabel(names=list(SIZE_BIN_NAMES)),
            "iscrowd": datasets.Value("bool"),
            "mask": {"size": datasets.Sequence(datasets.Value("int32"), length=2), "counts": datasets.Value("string")},
        }
    )


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE of a ``(H,W)`` 0/1 mask, as stored in the ``mask`` column."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
    """The ``(H,W)`` uint8 0/1 mask of a stored RLE (checked first: a dataset may come from anyone)."""
    size = [int(s) for s in rle["size"]]
    return decode_segmentation({"size": size, "counts": rle["counts"]}, tuple(size), "stored mask")


def region_row(
    region_id: int, image_id: int, label: int, rle: dict[str, Any], iscrowd: bool = False
) -> dict[str, Any] | None:
    """A ``regions`` row for a compressed RLE, or None when the mask is empty."""
    coco_rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    area = int(mask_utils.area(coco_rle))
    if area == 0:
        return None
    return dict(
        region_id=int(region_id),
        image_id=int(image_id),
        label=int(label),
        area=area,
        bbox=[float(v) for v in mask_utils.toBbox(coco_rle)],
        size_bin=size_bin(area),
        iscrowd=bool(iscrowd),
        mask=rle,
    )


@dataclass
class BuildReport:
    """What a build kept and what it skipped, and why."""

    split: str = "train"
    images_kept: int = 0
    regions_kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, what: Any, count: int = 1) -> None:
        self.skipped[reason] += count
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(str(what))

    def merge(self, other: BuildReport) -> None:
        self.images_kept += other.images_kept
        self.regions_kept += other.regions_kept
        for reason, count in other.skipped.items():
            self.skipped[reason] += count
            self.examples.setdefault(reason, [])
            self.examples[reason] = (self.examples[reason] + other.examples.get(reason, []))[:5]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildReport:
        """The report ``to_dict`` gave."""
        return cls(
            split=data["split"],
            images_kept=data["images_kept"],
            regions_kept=data["regions_kept"],
            skipped=Counter(data["skipped"]),
            examples={reason: list(examples) for reason, examples in data["examples"].items()},
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(
            split=self.split,
            images_kept=self.images_kept,
            regions_kept=self.regions_kept,
            skipped=dict(sorted(self.skipped.items())),
            examples=dict(sorted(self.examples.items())),
        )

    def summary(self, headline: str | None = None) -> str:
        """``headline`` (by default what the build kept), then one line per reason for skipping."""
        lines = [headline or f"split {self.split}: kept {self.images_kept} images and {self.regions_kept} regions"]
        for reason, count in sorted(self.skipped.items()):
            lines.append(f"  skipped {count}: {reason} (e.g. {', '.join(self.examples.get(reason, []))})")
        if not self.skipped:
            lines.append("  skipped nothing")
        return "\n".join(lines)


@dataclass
class ImageResult:
    """One photo's contribution: its ``images`` row (None when skipped) and its ``regions`` rows."""

    image: dict[str, Any] | None
    regions: list[dict[str, Any]]
    report: BuildReport


def photo_result(
    image_id: int, name: str, data: bytes, size: tuple[int, int], regions: list[dict[str, Any]], report: BuildReport
) -> ImageResult:
    """A photo's result: its ``images`` row with its kept regions, or skipped when none was kept."""
    if not regions:
        report.skip("image without a kept region", name)
        return ImageResult(None, [], report)
    width, height = size
    row = dict(image_id=image_id, file_name=name, width=width, height=height, image={"bytes": data, "path": name})
    return ImageResult(row, regions, report)


class RegionSource(Protocol):
    """A source of photos and regions; picklable, so that worker processes can run it."""

    class_names: Sequence[str]

    def tasks(self, report: BuildReport) -> list[Any]:
        """Small picklable work items (one per photo), after dataset-wide checks recorded in ``report``."""

    def process(self, task: Any) -> ImageResult:
        """Read one photo and its regions."""


class ShardWriter:
    """Streams rows into one parquet file, a row group at a time (memory does not grow with the file)."""

    def __init__(self, path: Path, features: datasets.Features) -> None:
        self.features = features
        self.schema = features.arrow_schema
        self.writer = pq.ParquetWriter(str(path), self.schema)
        self.buffer: list[dict[str, Any]] = []

    def write(self, row: dict[str, Any]) -> None:
        self.buffer.append(self.features.encode_example(row))
        if len(self.buffer) >= ROWS_PER_GROUP:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.writer.write_table(pa.Table.from_pylist(self.buffer, schema=self.schema))
            self.buffer = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _build_chunk(source: RegionSource, staging: Path, split: str, index: int, tasks: list[Any]) -> BuildReport:
    report = BuildReport(split=split)
    images = ShardWriter(staging / IMAGES / f"{split}-{index:05d}.parquet", image_features())
    regions = ShardWriter(staging / REGIONS / f"{split}-{index:05d}.parquet", region_features(source.class_names))
    try:
        for task in tasks:
            result = source.process(task)
            report.merge(result.report)
            if result.image is None:
                continue
            images.write(result.image)
            for row in result.regions:
                regions.write(row)
            report.images_kept += 1
            report.regions_kept += len(result.regions)
    finally:
        images.close()
        regions.close()
    return report


def _run_chunk(args: tuple[RegionSource, Path, str, int, list[Any]]) -> BuildReport:
    return _build_chunk(*args)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def build_region_dataset(
    source: RegionSource,
    out: str | os.PathLike,
    split: str = "train",
    num_proc: int = 1,
    images_per_shard: int = 256,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Write ``source``'s photos and regions as split ``split`` of the region dataset at ``out``.

    ``out`` may already hold other splits of a dataset with the same classes; the split appears only when it
    is complete. Returns the report, also written as ``build_report.{split}.json``.
    """
    out = Path(out)
    if not SPLIT_NAME.match(split):
        raise ValueError(f"split names are letters, digits and _, got {split!r}")
    existing = read_dataset_info(out) if out.exists() else None
    if out.exists() and existing is None and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a region dataset; choose an empty or new folder")
    if existing is not None:
        if list(existing["class_names"]) != list(source.class_names):
            raise ValueError(f"{out} holds a dataset with other classes; build into a new folder")
        if split in existing["splits"] and not overwrite:
            raise FileExistsError(f"{out} already has split {split!r}; pass overwrite=True to rebuild it")

    report = BuildReport(split=split)
    tasks = source.tasks(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.{split}.", dir=out.parent))
    try:
        (staging / IMAGES).mkdir()
        (staging / REGIONS).mkdir()
        jobs = [(source, staging, split, i, chunk) for i, chunk in enumerate(_chunks(tasks, images_per_shard))]
        bar = tqdm(total=len(tasks), desc=f"building {split}", unit="image", disable=not progress)
        if num_proc > 1 and len(jobs) > 1:
            with multiprocessing.get_context("spawn").Pool(min(num_proc, len(jobs))) as pool:
                for job, chunk_report in zip(jobs, pool.imap(_run_chunk, jobs), strict=True):
                    report.merge(chunk_report)
                    bar.update(len(job[-1]))
        else:
            for job in jobs:
                report.merge(_run_chunk(job))
                bar.update(len(job[-1]))
        bar.close()
        (staging / f"build_report.{split}.json").write_text(json.dumps(report.to_dict(), indent=2))
        _publish(staging, out, split, source, existing)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _publish(staging: Path, out: Path, split: str, source: RegionSource, existing: dict[str, Any] | None) -> None:
    splits = sorted(set(existing["splits"] if existing else []) | {split})
    source_text = describe_source(source)
    if existing and existing.get("source") and existing["source"] != source_text:
        source_text = f"{existing['source']} Split {split}: {source_text}"
    metadata = dataset_metadata(splits, source.class_names, source_text)
    write_dataset_card(staging, metadata, {name: staging if name == split else out for name in splits}, str(out))
    if existing is None:
        if out.exists():
            out.rmdir()  # empty, checked before building
        os.replace(staging, out)
        return
    for config in (IMAGES, REGIONS):
        for old in (out / config).glob(f"{split}-*.parquet"):
            old.unlink()
        for shard in sorted((staging / config).iterdir()):
            os.replace(shard, out / config / shard.name)
    os.replace(staging / f"build_report.{split}.json", out / f"build_report.{split}.json")
    os.replace(staging / "README.md", out / "README.md")  # last: it declares the split


def describe_source(source: RegionSource) -> str:
    """One sentence on where a source's photos and regions come from, for the dataset card."""
    return getattr(source, "description", "") or f"Built from a {type(source).__name__} source."
