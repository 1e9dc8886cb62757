"""Evaluating ROI models like the paper: accuracy by ROI size, per class and pooled, and mask probes."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import timm
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .data.regions import RegionDataset, region_collate
from .data.size_bins import SIZE_BIN_EDGES
from .data.transforms import eval_transform
from .hub.load import load_model
from .metrics import region_accuracy
from .metrics.report import PROBES
from .serving import RegionRunner, ServingOptions, as_runner


class ProbeRegions(Dataset):
    """The regions of a ``RegionDataset`` with the mask replaced as ``probe`` says (see ``PROBES``).

    ``other_region`` keeps only regions whose photo has another region, and gives them the next one's mask.
    """

    def __init__(self, regions: RegionDataset, probe: str) -> None:
        if probe not in PROBES:
            raise ValueError(f"unknown probe {probe!r}, expected one of {tuple(PROBES)}")
        self.regions, self.probe = regions, probe
        self.indices = list(range(len(regions)))
        self.partner: dict[int, int] = {}
        if probe == "other_region":
            by_image: dict[int, list[int]] = defaultdict(list)
            for index, image_id in enumerate(regions.regions["image_id"]):
                by_image[image_id].append(index)
            for members in by_image.values():
                if len(members) > 1:
                    self.partner.update({m: members[(i + 1) % len(members)] for i, m in enumerate(members)})
            self.indices = sorted(self.partner)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, Any]:
        index = self.indices[position]
        if self.probe == "true":
            return self.regions[index]
        photo, mask, region = self.regions.raw(index)
        if self.probe == "empty":
            mask = np.zeros_like(mask)
        elif self.probe == "full":
            mask = np.ones_like(mask)
        else:
            mask = self.regions.raw(self.partner[index])[1]
        return self.regions.item(photo, mask, region, allow_empty=True)


def predict_loader(
    model: torch.nn.Module | RegionRunner, loader: DataLoader, accelerator: Any, desc: str
) -> dict[str, np.ndarray]:
    """Top-5 classes, labels, areas and region ids of every region in ``loader`` from a model (as ``accelerate``
    prepared it) or a runner, gathered from all processes without the padding ``accelerate`` adds to the last
    batch."""
    runner = as_runner(model)
    outputs: dict[str, list[torch.Tensor]] = defaultdict(list)
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
            logits = runner(batch["pixel_values"].to(runner.device))  # a photo's regions share its trunk
            top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            gathered = accelerator.gather_for_metrics(
                (top, batch["label"].to(top.device), batch["area"].to(top.device), batch["region_id"].to(top.device))
            )
            for key, value in zip(("top", "label", "area", "region_id"), gathered, strict=True):
                outputs[key].append(value.cpu())
    return {key: torch.cat(values).numpy() for key, values in outputs.items()}


def check_classes(model: torch.nn.Module, class_names: list[str], spec: str) -> None:
    """Refuse a model whose classes differ from the dataset's."""
    if model.num_classes != len(class_names):
        raise ValueError(f"model {spec} has {model.num_classes} classes, the dataset {len(class_names)}")
    names = model.pretrained_cfg.get("label_names")
    if names and list(names) != list(class_names):
        first = next(i for i, (a, b) in enumerate(zip(names, class_names, strict=True)) if a != b)
        raise ValueError(
            f"model {spec} names class {first} {names[first]!r}, the dataset {class_names[first]!r}: "
            "the class orders differ"
        )


def evaluate_models(
    models: list[str],
    dataset: str | os.PathLike,
    split: str = "validation",
    batch_size: int = 32,
    num_workers: int = 0,
    probes: bool = False,
    limit: int | None = None,
    accelerator: Any = None,
    weights: str | None = None,
    size_bin_edges: Sequence[float] = SIZE_BIN_EDGES,
    serving: ServingOptions | None = None,
) -> dict[str, Any]:
    """Evaluate each model on the same regions, accuracy per size bin of ``size_bin_edges`` (the paper's by
    default), served as ``serving`` says (precision, runtime); under ``accelerate launch`` the work is split
    across processes and the totals are exact (``gather_for_metrics``)."""
    from accelerate import Accelerator

    repeated = sorted({spec for spec in models if models.count(spec) > 1})
    if repeated:
        raise ValueError(f"model {repeated[0]} is given more than once")
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    results: dict[str, Any] = dict(
        dataset=str(dataset),
        split=split,
        num_processes=accelerator.num_processes,
        size_bin_edges=list(size_bin_edges),
        models={},
    )
    for spec in models:
        model = load_model(spec, weights=weights)
        transform = eval_transform(timm.data.resolve_data_config({}, model=model))
        regions = RegionDataset(dataset, split, transform=transform)
        check_classes(model, regions.class_names, spec)
        regions.limit(limit)
        model = accelerator.prepare_model(model, evaluation_mode=True)
        runner = (serving or ServingOptions()).runner(accelerator.unwrap_model(model))
        entry: dict[str, Any] = dict(
            architecture=model.pretrained_cfg.get("architecture"),
            num_classes=model.num_classes,
            serving=runner.describe(),
            probes={},
        )
        for probe in PROBES if probes else ("true",):
            loader = DataLoader(
                ProbeRegions(regions, probe),
                batch_size=batch_size,
                num_workers=num_workers,
                collate_fn=region_collate,
            )
            out = predict_loader(runner, accelerator.prepare_data_loader(loader), accelerator, f"{spec} [{probe}]")
            metrics = region_accuracy(
                out["top"][:, 0],
                out["label"],
                out["area"],
                top5=out["top"],
                class_names=regions.class_names,
                size_bin_edges=size_bin_edges,
            )
            if probe == "true":
                entry["metrics"] = metrics
            entry["probes"][probe] = dict(
                description=PROBES[probe],
                mean_class_accuracy=metrics["mean_class_accuracy"],
                pooled_accuracy=metrics["pooled_accuracy"],
                num_regions=metrics["num_regions"],
            )
        results["models"][spec] = entry
    return results
