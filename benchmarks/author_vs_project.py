"""The paper author's way against the project's, on real photos with several masks each.

    python benchmarks/author_vs_project.py [--fixtures ../shared/fixtures/coco_example] [--model roi_resnet50_add_l1]

The author's code runs one forward per region, batch 1, at the photo's native size. The project runs
forward_regions: the photo's trunk once, the rest per mask, all masks of a photo in one batch, at the same size.
Same weights, so the predictions must be the same; the script checks that and prints regions/s of both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, paired_medians

import roi_attention  # noqa: F401

DEFAULT_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "coco_example"


def load_photos(folder: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    photos = []
    for sample in sorted(p for p in folder.iterdir() if p.is_dir()):
        image = np.asarray(Image.open(sample / "Image.png").convert("RGB"), dtype=np.float32) / 255
        mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
        tensor = torch.from_numpy(((image - mean) / std).astype(np.float32)).permute(2, 0, 1)
        masks = [np.asarray(Image.open(m)) > 0 for m in sorted(sample.glob("InputMask*.png"))]
        photos.append((tensor, torch.from_numpy(np.stack(masks)).float()[:, None]))
    return photos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES)
    parser.add_argument("--model", default="roi_resnet50_add_l1")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.fixtures.is_dir():
        print(f"skipped: {args.fixtures} is absent (the real COCO photos and masks live in shared/fixtures)")
        return 0
    photos = load_photos(args.fixtures)
    regions = sum(len(masks) for _, masks in photos)
    model = timm.create_model(args.model, num_classes=80).eval()
    for parameter in model.roi_branch.parameters():  # a trained-looking side branch
        torch.nn.init.normal_(parameter, std=0.1)

    def author():
        return [model(image[None], mask=mask[None]).argmax(-1) for image, masks in photos for mask in masks]

    def project():
        return [model.forward_regions(image, masks).argmax(-1) for image, masks in photos]

    with torch.inference_mode():
        same = torch.equal(torch.cat(author()), torch.cat(project()))
        times = paired_medians({"author": author, "project": project}, repeats=args.repeats, warmup=1)
    print(f"machine: {machine()}; {args.model}; {len(photos)} photos, {regions} regions, native sizes")
    print(f"author (one forward per region, batch 1): {regions / times['author']:.2f} regions/s")
    print(f"project (forward_regions per photo):      {regions / times['project']:.2f} regions/s")
    print(f"ratio project/author: {times['author'] / times['project']:.2f}; same predictions: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
