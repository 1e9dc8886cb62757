"""Is the training data pipeline ever the bottleneck? Regions/s it delivers against what a training step eats.

    python benchmarks/data_loading.py [--photos 64] [--workers 2] [--model roi_resnet50_add_l1] [--batch 8]

Builds a region dataset from scikit-image's real photos (640x427, COCO-sized), then measures regions/s of the
training pipeline (photo decode, RLE mask decode, train_transform, DataLoader with the training script's default
worker count) and samples/s of one training step of the model on the same machine. Target: headroom >= 2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, paired_medians
from dataset_build_memory import write_coco_folder

from roi_attention.data import CocoRegions, RegionDataset, build_region_dataset, region_collate, train_transform
from roi_attention.train import SeededRegions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="the training script's default")
    parser.add_argument("--model", default="roi_resnet50_add_l1")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--photo-size", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    model = timm.create_model(args.model, num_classes=80)
    config = timm.data.resolve_data_config({}, model=model)
    with tempfile.TemporaryDirectory() as workdir:
        images, annotations = write_coco_folder(Path(workdir) / "src", args.photos, args.photo_size)
        build_region_dataset(CocoRegions(images, annotations), Path(workdir) / "ds", progress=False)
        dataset = SeededRegions(RegionDataset(Path(workdir) / "ds", "train", transform=train_transform(config)), 0)
        keys = [(draw, draw % len(dataset)) for draw in range(args.photos)]
        loader = DataLoader(
            dataset, batch_size=args.batch, sampler=keys, num_workers=args.workers, collate_fn=region_collate
        )
        next(iter(loader))  # start-up of the workers is not part of the steady rate
        start = time.perf_counter()
        count = sum(len(batch["label"]) for batch in loader)
        pipeline = count / (time.perf_counter() - start)
    x = torch.randn(args.batch, 4, *config["input_size"][1:]).clamp(0, 1)
    y = torch.zeros(args.batch, dtype=torch.long)
    optimizer = torch.optim.AdamW(model.parameters())

    def step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model.train()(x), y).backward()
        optimizer.step()

    consumed = args.batch / paired_medians({"step": step}, repeats=args.repeats, warmup=1)["step"]
    print(f"machine: {machine()}; {args.photos} photos {args.photo_size}px, {args.workers} workers")
    print(
        f"data pipeline: {pipeline:.1f} regions/s; training step of {args.model} (batch {args.batch}): "
        f"{consumed:.1f} samples/s; headroom {pipeline / consumed:.1f}x (target >= 2)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
