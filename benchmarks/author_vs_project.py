"""The paper author's way against the project's, on real photos with several masks each, for every variant.

    python benchmarks/author_vs_project.py [--fixtures ../shared/fixtures/coco_example]   # every roi_resnet50_*
    python benchmarks/author_vs_project.py --backbone resnet18 --variants add_l3 --repeats 1

The author's code runs one forward per region, batch 1, on the prepared photo. The project runs forward_regions:
the trunk before the first merge point once per photo, the masks in the groups the model picks for this device
(``regions_chunk_size``). Same weights and input, so the logits must agree; the script checks that and prints
regions/s of both, their ratio and the targets (add_l1 >= 1.0, add_l3 >= 3, every variant >= 0.95).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, paired_medians

import roi_attention
from roi_attention.data.inputs import read_author_samples

DEFAULT_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "coco_example"
TARGETS = {"add_l1": 1.0, "add_l3": 3.0}
EVERY_VARIANT_TARGET = 0.95


def load_photos(folder: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each photo at its native size, normalised with ImageNet's mean and std, with its ``(N,1,H,W)`` masks."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    photos = []
    for photo, masks in read_author_samples(folder):
        tensor = torch.from_numpy(((photo / 255 - mean) / std).astype(np.float32)).permute(2, 0, 1)
        photos.append((tensor, torch.from_numpy(np.stack(masks) > 0).float()[:, None]))
    return photos


def compare(model: torch.nn.Module, photos: list[tuple[torch.Tensor, torch.Tensor]], repeats: int) -> tuple[float, ...]:
    """Regions/s of the author's loop and of forward_regions, and the largest logit difference."""

    def author():
        return torch.cat([model(image[None], mask=mask[None]) for image, masks in photos for mask in masks])

    def project():
        return torch.cat([model.forward_regions(image, masks) for image, masks in photos])

    regions = sum(len(masks) for _, masks in photos)
    with torch.inference_mode():
        difference = float((author() - project()).abs().max())
        times = paired_medians({"author": author, "project": project}, repeats=repeats, warmup=1)
    return regions / times["author"], regions / times["project"], difference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--variants", nargs="*", default=list(roi_attention.VARIANTS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.fixtures.is_dir():
        print(f"skipped: {args.fixtures} is absent (the real COCO photos and masks live in shared/fixtures)")
        return 0
    photos = load_photos(args.fixtures)
    regions = sum(len(masks) for _, masks in photos)
    sizes = sorted({f"{image.shape[2]}x{image.shape[1]}" for image, _ in photos})
    print(f"machine: {machine()}; roi_{args.backbone}_*; {len(photos)} photos ({', '.join(sizes)}), {regions} regions")
    print(f"{'variant':16} {'author r/s':>10} {'project r/s':>11} {'ratio':>6} {'target':>6}  max |logit diff|")
    failures = []
    for variant in args.variants:
        model = timm.create_model(f"roi_{args.backbone}_{variant}", num_classes=80).eval()
        for parameter in model.roi_branch.parameters():  # a trained-looking side branch
            torch.nn.init.normal_(parameter, std=0.1)
        author, project, difference = compare(model, photos, args.repeats)
        target = TARGETS.get(variant, EVERY_VARIANT_TARGET)
        ratio = project / author
        met = "met" if ratio >= target else "MISSED"
        print(f"{variant:16} {author:10.2f} {project:11.2f} {ratio:6.2f} {target:6.2f}  {difference:.1e} {met}")
        if difference > 1e-3:
            failures.append(f"{variant}: logits differ by {difference:.1e}")
    print("ratio = project / author regions/s, measured side by side (interleaved, medians)")
    for failure in failures:
        print(failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
