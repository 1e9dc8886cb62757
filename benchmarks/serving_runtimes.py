"""Each precision and runtime against eager float32, side by side: regions/s and what each costs in accuracy.

    python benchmarks/serving_runtimes.py            # roi_resnet50_* and the ImageNet Lite0 add_l1/add_l3/crop,
                                                     # and the demo's model (make demo) on its validation scenes
    python benchmarks/serving_runtimes.py --quick    # roi_resnet50_add_l1 and the demo's model, one repeat

Speed: every region of the real COCO fixture photos, prepared as `predict` prepares them (the model's input size,
224x224 for the ImageNet backbones, 64x64 for the demo), through `RegionRunner.forward_regions`, the options
interleaved run by run (medians). Accuracy: the largest change of top-1 against eager float32 on those regions
(the ImageNet Lite0 models: real weights; roi_resnet50 has random weights, speed only) and the demo model's pooled
accuracy and mask probes on its validation scenes through `evaluate_models`. int8 calibrates on regions that are
not measured: scikit-image's photos with their hand-drawn regions, and the demo's train split. The last line:
`best add_l1: OPTION RATIOx, pooled accuracy change D points` (the fastest option for roi_resnet50_add_l1 within
1 point of the demo's float32 pooled accuracy).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, paired_medians

import roi_attention  # noqa: F401  (registers the models)
from roi_attention.data.inputs import read_author_samples
from roi_attention.data.transforms import prepare_regions
from roi_attention.examples import PHOTO_REGIONS, polygon_mask
from roi_attention.serving import RegionRunner, ServingError, ServingOptions, prepare_runner

DEFAULT_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "coco_example"
OPTIONS = [("fp32", "eager"), ("fp32", "compile"), ("fp32", "onnxruntime"), ("int8", "onnxruntime")]
OPTIONS += [("bf16", "eager"), ("bf16", "compile")]
ACCURACY_TOLERANCE = 1.0  # points of pooled accuracy
TARGET_RATIO = 1.5
GROUP_SIZES = (1, 2, 4, 8)  # masks per ONNX Runtime run, measured for add_l1


def calibration_photos() -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """scikit-image's photos with the hand-drawn regions of the app's examples (none of them is measured)."""
    from skimage import data

    photos = []
    for name, regions in PHOTO_REGIONS.items():
        photo = getattr(data, name)()
        size = (photo.shape[1], photo.shape[0])
        photos.append((photo, [polygon_mask(polygon, size) for polygon in regions.values()]))
    return photos


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


def measure(spec: str, model, photos, calibration, repeats: int, options, group_sizes=()) -> dict[str, dict]:
    """Per option: regions/s, its ratio to eager float32, top-1 changes against it, setup seconds."""
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
    for key in runners:
        probabilities = logits[key].softmax(-1)
        changed = int((probabilities.argmax(-1) != base.argmax(-1)).sum())
        top5 = base.topk(min(5, base.shape[-1]), -1).indices
        outside = int((top5 != probabilities.argmax(-1, keepdim=True)).all(-1).sum())
        rows[key].update(
            rate=regions / times[key],
            ratio=times["fp32/eager"] / times[key],
            changed=changed,
            outside=outside,
            regions=regions,
            probability=float((probabilities - base).abs().max()),
        )
    print(f"\n{spec}: {len(inputs)} photos, {regions} regions at {inputs[0][0].shape[-1]}x{inputs[0][0].shape[-2]}")
    print(
        f"{'option':18} {'setup s':>7} {'regions/s':>9} {'x fp32':>6} {'top-1 changed':>13} {'not in top-5':>12} "
        f"{'max |dp|':>8}"
    )
    for key, row in rows.items():
        if "refused" in row:
            print(f"{key:18} refused: {row['refused']}")
        else:
            changed = f"{row['changed']}/{row['regions']}"
            print(
                f"{key:18} {row['setup']:7.1f} {row['rate']:9.2f} {row['ratio']:6.2f} {changed:>13} "
                f"{row['outside']:12d} {row['probability']:8.3f}",
                flush=True,
            )
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
    parser.add_argument("--quick", action="store_true", help="roi_resnet50_add_l1 and the demo, one timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo-limit", type=int, default=None, help="only the first N validation regions")
    parser.add_argument("--backbone", default="resnet50", help="the random-weights models' backbone")
    parser.add_argument(
        "--options", nargs="*", default=[f"{p}/{r}" for p, r in OPTIONS], help="PRECISION/RUNTIME pairs to measure"
    )
    args = parser.parse_args(argv)
    options = [tuple(option.split("/")) for option in args.options]
    if ("fp32", "eager") not in options:
        options.insert(0, ("fp32", "eager"))  # the reference of every ratio
    if not args.fixtures.is_dir():
        print(f"skipped: {args.fixtures} is absent (the real COCO photos and masks live in shared/fixtures)")
        return 0
    repeats = 1 if args.quick else args.repeats
    variants = ["add_l1"] if args.quick else ["add_l1", "add_l3", "crop"]
    print(f"machine: {machine()}; CPU capability {torch.backends.cpu.get_cpu_capability()}")
    photos, calibration = read_author_samples(args.fixtures), calibration_photos()
    speed = {}
    for variant in variants:
        spec = f"roi_{args.backbone}_{variant} (random weights)"
        model = timm.create_model(f"roi_{args.backbone}_{variant}", num_classes=80).eval()
        for parameter in model.roi_branch.parameters():  # a trained-looking side branch
            torch.nn.init.normal_(parameter, std=0.1)
        sizes = GROUP_SIZES if variant == "add_l1" and not args.quick else ()
        speed[variant] = measure(spec, model, photos, calibration, repeats, options, sizes)
    from roi_attention.hub import convert_efficientnet_lite0

    weights = convert_efficientnet_lite0()
    for variant in [] if args.quick else variants:
        spec = f"roi_tf_efficientnet_lite0_{variant}"
        model = timm.create_model(spec, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights))).eval()
        sizes = GROUP_SIZES if variant == "add_l1" and not args.quick else ()
        measure(f"{spec} (ImageNet weights)", model, photos, calibration, repeats, options, sizes)
    demo = find_demo(args.demo)
    if demo is None:
        print("\nno demo model (make demo writes runs/demo): the pooled accuracy change is not measured")
        return 0
    from roi_attention.hub import load_model

    model = load_model(str(demo / "training" / "model"))
    measure("the demo's model", model, photos, calibration, repeats, options)
    accuracy = demo_accuracy(demo, options, args.demo_limit)
    candidates = [
        (row["ratio"], key)
        for key, row in speed["add_l1"].items()
        if "ratio" in row and "change" in accuracy.get(key, {}) and abs(accuracy[key]["change"]) <= ACCURACY_TOLERANCE
    ]
    ratio, best = max(candidates)
    met = "met" if ratio >= TARGET_RATIO else f"MISSED by {TARGET_RATIO - ratio:.2f}x"
    print(f"\ntargets: >= {TARGET_RATIO}x eager fp32 for add_l1 within {ACCURACY_TOLERANCE} point: {met}")
    print(f"best add_l1: {best} {ratio:.2f}x, pooled accuracy change {accuracy[best]['change']:+.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
