"""Training data that is the same however it is split: across ranks, workers, or a resumed run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from ..data.regions import ClassBalancedSampler, RegionDataset


class DrawSampler(Sampler[tuple[int, int]]):
    """Yields ``(draw, region index)`` for one rank: ``draw`` numbers each sample of the global sequence
    (epoch after epoch), so that a sample's augmentation can depend on it alone. Starts at ``start_draw``.

    Regions come class-balanced (``ClassBalancedSampler``) or as a shuffled pass over all regions; rank ``r``
    of ``n`` takes draws ``r, r + n, r + 2n, ...``.
    """

    def __init__(
        self, dataset: RegionDataset, balanced: bool, seed: int, rank: int, num_replicas: int, start_draw: int = 0
    ) -> None:
        self.labels, self.image_ids = dataset.labels, dataset.regions["image_id"]
        self.balanced, self.seed, self.rank, self.num_replicas = balanced, seed, rank, num_replicas
        self.epoch_size = len(self.labels)
        if start_draw % num_replicas:
            raise ValueError(f"start_draw {start_draw} is not a multiple of the {num_replicas} ranks")
        self.start_draw = start_draw

    def _epoch(self, epoch: int) -> list[int]:
        if self.balanced:
            sampler = ClassBalancedSampler(self.labels, self.image_ids, self.epoch_size, seed=self.seed)
            sampler.set_epoch(epoch)
            return list(sampler)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.labels), generator=generator)[: self.epoch_size].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        draw, cached_epoch, order = self.start_draw + self.rank, None, []
        while True:
            epoch, position = divmod(draw, self.epoch_size)
            if epoch != cached_epoch:
                cached_epoch, order = epoch, self._epoch(epoch)
            yield draw, order[position]
            draw += self.num_replicas


class SeededRegions(Dataset):
    """``dataset[region]`` with the random transform seeded by the draw number: a sample is the same whichever
    worker or rank makes it, and after a resume."""

    def __init__(self, dataset: RegionDataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        draw, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + draw)
            item = self.dataset[index]
        item["draw"] = draw
        return item
