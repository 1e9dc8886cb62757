"""Evaluation results as people read them: the paper's tables, the CSV, and accuracy against region size."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

PROBES: dict[str, str] = {
    "true": "the region's own mask",
    "empty": "an empty mask",
    "full": "a mask of the whole photo",
    "other_region": "the mask of another region of the same photo",
}


def _cell(value: float | None, count: int) -> str:
    return "-" if value is None else f"{100 * value:.1f}% (n={count})"


def markdown_tables(results: dict[str, Any]) -> str:
    """The paper's Tables 1-4 shape: rows = size bins and all sizes, columns = models."""
    models = list(results["models"])
    parts = []
    for key, title in (("mean_class_accuracy", "Mean accuracy per class"), ("pooled_accuracy", "Pooled accuracy")):
        parts.append(f"**{title}** ({results['dataset']}, split {results['split']})\n")
        parts.append("| region size (pixels) | " + " | ".join(f"`{m}`" for m in models) + " |")
        parts.append("|---|" + "---:|" * len(models))
        for index, row in enumerate(results["models"][models[0]]["metrics"]["size_bins"]):
            name = row["bin"]
            bins = [results["models"][m]["metrics"]["size_bins"][index] for m in models]
            if all(b["num_regions"] == 0 for b in bins):
                continue
            parts.append(f"| {name} | " + " | ".join(_cell(b[key], b["num_regions"]) for b in bins) + " |")
        overall = [results["models"][m]["metrics"] for m in models]
        parts.append("| **all sizes** | " + " | ".join(_cell(o[key], o["num_regions"]) for o in overall) + " |\n")
    if any(len(results["models"][m]["probes"]) > 1 for m in models):
        parts.append("**Mask probes** (pooled accuracy with the mask replaced)\n")
        parts.append("| mask given | " + " | ".join(f"`{m}`" for m in models) + " |")
        parts.append("|---|" + "---:|" * len(models))
        for probe, description in PROBES.items():
            cells = [results["models"][m]["probes"].get(probe) for m in models]
            parts.append(
                f"| {description} | "
                + " | ".join("-" if c is None else _cell(c["pooled_accuracy"], c["num_regions"]) for c in cells)
                + " |"
            )
    return "\n".join(parts) + "\n"


def write_results(results: dict[str, Any], out: str | os.PathLike) -> list[Path]:
    """``results.json``, ``results.md``, ``results.csv`` and ``accuracy_by_size.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown_tables(results))
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "metric", "size_bin", "accuracy", "num_regions", "num_classes"])
        for model, entry in results["models"].items():
            for key in ("mean_class_accuracy", "pooled_accuracy"):
                for row in [*entry["metrics"]["size_bins"], dict(entry["metrics"], bin="all")]:
                    writer.writerow([model, key, row["bin"], row[key], row["num_regions"], row["num_classes"]])
            for probe, values in entry["probes"].items():
                writer.writerow([model, f"probe:{probe}", "all", values["pooled_accuracy"], values["num_regions"], ""])
    plot_accuracy_by_size(results, out / "accuracy_by_size.png")
    return [out / name for name in ("results.json", "results.md", "results.csv", "accuracy_by_size.png")]


FEW_REGIONS = 30  # a bin with fewer regions than this is drawn hollow, with its 95% interval


def wilson_interval(correct: float, count: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of an accuracy of ``correct`` out of ``count``."""
    if count == 0:
        return 0.0, 1.0
    p = correct / count
    centre = (p + z * z / (2 * count)) / (1 + z * z / count)
    half = z * math.sqrt(p * (1 - p) / count + z * z / (4 * count * count)) / (1 + z * z / count)
    return max(0.0, centre - half), min(1.0, centre + half)


def plot_accuracy_by_size(results: dict[str, Any], path: Path) -> None:
    """Save ``accuracy_by_size_figure`` of ``results`` as an image."""
    accuracy_by_size_figure(results).savefig(path, dpi=120)


def accuracy_by_size_figure(results: dict[str, Any]):
    """Accuracy against ROI size, one line per model, per class and pooled side by side. Marker area grows with
    the regions behind a point; bins with fewer than ``FEW_REGIONS`` are hollow, with the pooled accuracy's 95%
    Wilson interval; bins no model has regions in are left out."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    entries = results["models"]
    names = [row["bin"] for row in next(iter(entries.values()))["metrics"]["size_bins"]]
    counts = [max(e["metrics"]["size_bins"][i]["num_regions"] for e in entries.values()) for i in range(len(names))]
    shown = [i for i, count in enumerate(counts) if count > 0]
    largest = max(counts) if shown else 1
    figure = Figure(figsize=(14, 4.8))  # not pyplot: no global state, and the caller's backend stays as it is
    axes = figure.subplots(1, 2, sharey=True)
    colours = matplotlib.colormaps["tab10"]
    for axis, key, title in zip(
        axes, ("mean_class_accuracy", "pooled_accuracy"), ("mean accuracy per class", "pooled accuracy"), strict=True
    ):
        for number, (model, entry) in enumerate(entries.items()):
            colour = colours(number % 10)
            bins = entry["metrics"]["size_bins"]
            points = [(x, bins[i]) for x, i in enumerate(shown) if bins[i][key] is not None and bins[i]["num_regions"]]
            if not points:
                continue
            # Several models' points and intervals side by side within their bin.
            dodge = 0.3 * (number / (len(entries) - 1) - 0.5) if len(entries) > 1 else 0.0
            points = [(x + dodge, row) for x, row in points]
            xs = [x for x, _ in points]
            ys = [100 * row[key] for _, row in points]
            axis.plot(xs, ys, color=colour, alpha=0.5, linewidth=1.5, label=model)
            for x, row in points:
                count, value = row["num_regions"], 100 * row[key]
                few = count < FEW_REGIONS
                area = 25 + 275 * math.sqrt(count / largest)
                axis.scatter(
                    [x], [value], s=area, color=colour, facecolors="white" if few else colour, linewidths=1.5, zorder=3
                )
                if few and key == "pooled_accuracy":
                    low, high = wilson_interval(row[key] * count, count)
                    axis.errorbar(
                        [x],
                        [value],
                        yerr=[[value - 100 * low], [100 * high - value]],
                        color=colour,
                        capsize=3,
                        linewidth=1,
                        zorder=2,
                    )
        labels = [f"{names[i]}\nn={counts[i]}" for i in shown]
        wide = len(shown) > 6
        axis.set_xticks(
            range(len(shown)), labels, rotation=45 if wide else 0, ha="right" if wide else "center", fontsize=8
        )
        axis.set_xlabel("region size (pixels in the original image); n = regions in the bin")
        axis.set_title(title)
        axis.set_ylim(-3, 103)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    handles, labels = axes[1].get_legend_handles_labels()
    handles += [
        Line2D([], [], marker="o", linestyle="", color="gray", markersize=9),
        Line2D([], [], marker="o", linestyle="", color="gray", markerfacecolor="white", markersize=9),
    ]
    labels += ["marker area ~ regions in the bin", f"hollow: < {FEW_REGIONS} regions (95% interval)"]
    axes[1].legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.tight_layout()
    return figure
