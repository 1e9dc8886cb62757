"""Many regions of one photo: forward_regions (trunk once, the rest per mask) against one forward per mask.

    python benchmarks/many_regions.py                         # roi_resnet50_*, 224x224, 1/4/16/64 masks
    python benchmarks/many_regions.py --backbone resnet18 --size 64 --counts 1 4 --variants add_l3 --repeats 1

Three ways for N masks of one photo: forward_regions (masks grouped as the model chooses for the device); the
naive batch (the photo repeated N times, one forward); and the author's way, one batch-1 forward per mask.
Regions/s of each, the ratios forward_regions / naive batch and forward_regions / per-mask loop, and a check
that all give the same logits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, paired_medians

import roi_attention


def masks_for(count: int, size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(count)
    masks = torch.zeros(count, 1, size, size)
    for i in range(count):
        y, x = torch.randint(0, size * 3 // 4, (2,), generator=generator).tolist()
        h, w = torch.randint(1, size // 4 + 2, (2,), generator=generator).tolist()
        masks[i, :, y : y + h, x : x + w] = 1
    return masks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--variants", nargs="*", default=list(roi_attention.VARIANTS))
    parser.add_argument("--counts", nargs="*", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-per-mask-above", type=int, default=16, help="the batch-1 loop only up to N masks")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}; roi_{args.backbone}_*, {args.size}x{args.size}, medians of {args.repeats}")
    print(
        f"{'variant':16} {'masks':>5} {'shared r/s':>10} {'batch r/s':>10} {'per-mask r/s':>12} "
        f"{'shared/batch':>12} {'shared/per-mask':>15}"
    )
    image = torch.randn(3, args.size, args.size)
    for variant in args.variants:
        model = timm.create_model(f"roi_{args.backbone}_{variant}", check_inputs=False).eval()
        for parameter in model.roi_branch.parameters():  # a trained-looking side branch
            torch.nn.init.normal_(parameter, std=0.1)
        for count in args.counts:
            masks = masks_for(count, args.size)
            batch = image.expand(count, -1, -1, -1)
            ways = {
                "shared": lambda model=model, masks=masks: model.forward_regions(image, masks),
                "batch": lambda model=model, masks=masks, batch=batch: model(batch, mask=masks),
            }
            if count <= args.skip_per_mask_above:
                ways["per_mask"] = lambda model=model, masks=masks: [model(image[None], mask=m[None]) for m in masks]
            with torch.inference_mode():
                shared, batched = ways["shared"](), ways["batch"]()
                if not torch.allclose(shared, batched, atol=1e-3, rtol=1e-3):
                    raise AssertionError(f"{variant}: forward_regions and the batch disagree")
                times = paired_medians(ways, repeats=args.repeats, warmup=1)
            rate = {k: count / v for k, v in times.items()}
            per_mask = f"{rate['per_mask']:12.1f}" if "per_mask" in rate else f"{'-':>12}"
            over_loop = f"{rate['shared'] / rate['per_mask']:15.2f}" if "per_mask" in rate else f"{'-':>15}"
            print(
                f"{variant:16} {count:5d} {rate['shared']:10.1f} {rate['batch']:10.1f} {per_mask} "
                f"{rate['shared'] / rate['batch']:12.2f} {over_loop}",
                flush=True,
            )
    print("targets: _l3 at 16 masks shared/batch >= 3; shared/per-mask >= 0.95; the logits of all ways agree (checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
