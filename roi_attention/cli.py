"""The ``roi-attention`` command."""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections.abc import Sequence

import timm
import torch

from . import models  # noqa: F401  (registers the models)
from .layers import RoiInputError
from .models import PretrainedWeightsError


def _cmd_models(args: argparse.Namespace) -> int:
    names = timm.list_models(args.filter)
    if args.markdown:
        from .models.summary import markdown_table

        print(markdown_table(names))
        return 0
    for name in names:
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{name}.*")]
        print(f"{name:40s} tags: {', '.join(tags)}")
    return 0


def _cmd_convert_lite0(args: argparse.Namespace) -> int:
    from .hub import convert_efficientnet_lite0

    path = convert_efficientnet_lite0(args.out, overwrite=args.overwrite)
    print(f"timm tf_efficientnet_lite0 ImageNet weights: {path}")
    print(f"use: timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file='{path}'))")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from timm.data import ImageNetInfo, resolve_data_config

    from .data.transforms import prepare_regions
    from .examples import coffee_example
    from .hub import convert_efficientnet_lite0

    names = timm.list_models("roi_*")
    print(f"{len(names)} ROI models are registered with timm (roi-attention models lists them), e.g.:")
    for name in ("roi_resnet50_add_l1", "roi_resnet50_mul_l3", "roi_resnet50_blackout_image", args.model):
        print(f"  {name}")
    weights = convert_efficientnet_lite0()
    model = timm.create_model(args.model, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights))).eval()
    print(f"\n{args.model}: real ImageNet EfficientNet-Lite0 weights from {weights}")
    photo, masks = coffee_example()
    batch = prepare_regions(photo, list(masks.values()), resolve_data_config({}, model=model))
    with torch.inference_mode():
        probabilities = model(batch).softmax(dim=-1)
    info = ImageNetInfo()
    print(f"photo: scikit-image coffee() {photo.shape[1]}x{photo.shape[0]}; regions: {', '.join(masks)}")
    for region, probs in zip(masks, probabilities, strict=True):
        top = probs.topk(args.topk)
        labels = ", ".join(
            f"{info.index_to_description(int(i))} {float(p):.1%}" for p, i in zip(top.values, top.indices, strict=True)
        )
        print(f"  {region:6s} -> {labels}")
    print(
        "\nThe side branch is still at its zero-effect initialisation, so this model ignores the mask: every\n"
        "region gets the whole photo's ImageNet prediction. A model trained on regions (COCO, OpenSurfaces)\n"
        "names what is inside each mask; training arrives with the training issue."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roi-attention", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("models", help="list the registered ROI models and their pretrained tags")
    listing.add_argument("--filter", default="roi_*", help="glob over model names (default: roi_*)")
    listing.add_argument("--markdown", action="store_true", help="a markdown table with parameters and GMACs")
    listing.set_defaults(run=_cmd_models)

    convert = commands.add_parser("convert-lite0", help="convert the offline EfficientNet-Lite0 ImageNet weights")
    convert.add_argument("--out", default=None, help="output .safetensors (default: in the cache folder)")
    convert.add_argument("--overwrite", action="store_true")
    convert.set_defaults(run=_cmd_convert_lite0)

    demo = commands.add_parser("demo", help="run an ROI model with real ImageNet weights on an example photo")
    demo.add_argument("--model", default="roi_tf_efficientnet_lite0_add_l1")
    demo.add_argument("--topk", type=int, default=3)
    demo.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``roi-attention`` command."""
    args = build_parser().parse_args(argv)
    if args.command == "models" and not any(fnmatch.fnmatch(n, args.filter) for n in timm.list_models("roi_*")):
        print(f"roi-attention: no ROI model matches {args.filter!r}", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except (PretrainedWeightsError, RoiInputError, ImportError, FileNotFoundError, ValueError) as error:
        print(f"roi-attention: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
