"""Reading region datasets: one item per region, decoded and transformed on access."""

from __future__ import annotations

import io
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler
from torchvision import tv_tensors

from .build import decode_mask
from .card import IMAGES, REGIONS, read_dataset_info
from .inputs import read_photo
from .transforms import EmptyRegionError, pack


def load_region_split(source: str | os.PathLike, split: str) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The ``regions`` and ``images`` tables of split ``split`` of a region dataset folder or Hub id."""
    folder = Path(source)
    if not folder.is_dir() and (folder.is_absolute() or str(source).startswith(".") or str(source).count("/") != 1):
        raise FileNotFoundError(f"dataset {source} does not exist: expected a region dataset folder or a Hub id")
    tables = []
    for config in (REGIONS, IMAGES):
        if folder.is_dir():
            # Local folders load by absolute file paths: datasets' cache keys local files by name and mtime only,
            # so two folders with the same layout could otherwise share a cache entry.
            files = sorted(str(p.resolve()) for p in (folder / config).glob(f"{split}-*.parquet"))
            if not files:
                info = read_dataset_info(folder)
                raise ValueError(
                    f"{folder} has no split {split!r} of a region dataset"
                    + (f" (it has {', '.join(info['splits'])})" if info else " (no region dataset README)")
                )
            tables.append(datasets.load_dataset("parquet", data_files={split: files}, split=split))
        else:
            try:
                tables.append(datasets.load_dataset(str(source), config, split=split))
            except Exception as error:  # datasets raises many kinds for a missing repo, config or split
                raise ValueError(f"{source} has no split {split!r} of a region dataset: {error}") from error
    regions, images = tables
    return regions, images.cast_column("image", datasets.Image(decode=False))


class RegionDataset(Dataset):
    """Regions of one split; item ``i`` is a dict with ``pixel_values`` (the packed ``(4,H,W)`` input after
    ``transform``), ``label``, ``area``, ``size_bin``, ``region_id`` and ``image_id``.

    ``transform`` takes and returns ``(tv_tensors.Image, tv_tensors.Mask)``: ``train_transform`` or
    ``eval_transform``. An item whose mask is empty after the transform raises ``EmptyRegionError``.
    """

    def __init__(
        self,
        source: str | os.PathLike,
        split: str = "train",
        transform: Callable[[Any, Any], tuple[Any, Any]] | None = None,
    ) -> None:
        self.source, self.split, self.transform = str(source), split, transform
        self.regions, self.images = load_region_split(source, split)
        self.row_of_image = {image_id: row for row, image_id in enumerate(self.images["image_id"])}
        self.class_names: list[str] = self.regions.features["label"].names

    def __len__(self) -> int:
        return len(self.regions)

    @property
    def labels(self) -> list[int]:
        return self.regions["label"]

    def photo(self, image_id: int) -> tuple[np.ndarray, str]:
        """The ``(H,W,3)`` uint8 photo and its file name (the stored pixels, which COCO geometry refers to)."""
        row = self.images[self.row_of_image[image_id]]
        photo = read_photo(io.BytesIO(row["image"]["bytes"]), f"stored photo {row['file_name']}", as_displayed=False)
        return photo, row["file_name"]

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Photo, ``(H,W)`` 0/1 mask and row of region ``index``, untransformed."""
        region = self.regions[index]
        photo, _ = self.photo(region["image_id"])
        return photo, decode_mask(region["mask"]), region

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.item(*self.raw(index))

    def item(
        self, photo: np.ndarray, mask: np.ndarray, region: dict[str, Any], allow_empty: bool = False
    ) -> dict[str, Any]:
        """The item of ``region`` for a photo and a mask (its own, or another for a probe), transformed.
        An empty mask after the transform raises ``EmptyRegionError`` unless ``allow_empty``."""
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1))
        mask_tv = tv_tensors.Mask(torch.from_numpy(mask)[None])
        if self.transform is not None:
            image, mask_tv = self.transform(image, mask_tv)
        else:
            image = image.float() / 255
        if not allow_empty and not bool(mask_tv.any()):
            raise EmptyRegionError(
                f"region {region['region_id']} of image {region['image_id']} ({self.source}, {self.split}) "
                "has an empty mask after the transform"
            )
        return dict(
            pixel_values=pack(image.as_subclass(Tensor), mask_tv.as_subclass(Tensor))[0],
            label=region["label"],
            area=region["area"],
            size_bin=region["size_bin"],
            region_id=region["region_id"],
            image_id=region["image_id"],
        )

    def limit(self, count: int | None) -> None:
        """Keep only the first ``count`` regions (all when None): a quick look at a large split."""
        if count is not None:
            self.regions = self.regions.select(range(min(count, len(self.regions))))


class ClassBalancedSampler(Sampler[int]):
    """The paper's sampling: a class uniformly, then an image holding it, then one of its regions there.

    Deterministic given ``seed`` and the epoch (``set_epoch``). Under distributed training each of
    ``num_replicas`` ranks draws a distinct share of one global sequence.
    """

    def __init__(
        self,
        labels: list[int],
        image_ids: list[int],
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        num_replicas: int = 1,
    ) -> None:
        if len(labels) != len(image_ids):
            raise ValueError(f"got {len(labels)} labels and {len(image_ids)} image ids")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        by_class: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        for index, (label, image_id) in enumerate(zip(labels, image_ids, strict=True)):
            by_class[label][image_id].append(index)
        self.classes = sorted(by_class)
        self.images_of = [list(by_class[c].values()) for c in self.classes]
        self.num_samples = math.ceil((num_samples or len(labels)) / num_replicas)
        self.seed, self.rank, self.num_replicas, self.epoch = seed, rank, num_replicas, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = self.num_samples * self.num_replicas
        classes = torch.randint(len(self.classes), (total,), generator=generator).tolist()
        picks = torch.rand(total, 2, generator=generator).tolist()
        for step in range(self.rank, total, self.num_replicas):
            images = self.images_of[classes[step]]
            regions = images[int(picks[step][0] * len(images))]
            yield regions[int(picks[step][1] * len(regions))]


def region_collate(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Stack dataset items into a batch."""
    return {
        key: torch.stack([item[key] for item in items])
        if key == "pixel_values"
        else torch.tensor([item[key] for item in items])
        for key in items[0]
    }


__all__ = ["ClassBalancedSampler", "EmptyRegionError", "RegionDataset", "load_region_split", "region_collate"]
