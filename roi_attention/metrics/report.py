"""Evaluation results as people read them: the paper's tables, the CSV, and accuracy against region size."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from ..data.size_bins import SIZE_BIN_NAMES

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
        for index, name in enumerate(SIZE_BIN_NAMES):
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


def plot_accuracy_by_size(results: dict[str, Any], path: Path) -> None:
    """Accuracy against ROI size, one line per model, per class and pooled side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for axis, key, title in zip(
        axes, ("mean_class_accuracy", "pooled_accuracy"), ("mean accuracy per class", "pooled accuracy"), strict=True
    ):
        for model, entry in results["models"].items():
            bins = entry["metrics"]["size_bins"]
            xs = [i for i, b in enumerate(bins) if b[key] is not None]
            axis.plot(xs, [100 * bins[i][key] for i in xs], marker="o", label=model)
        axis.set_xticks(range(len(SIZE_BIN_NAMES)), SIZE_BIN_NAMES, rotation=45, ha="right", fontsize=8)
        axis.set_xlabel("region size (pixels in the original image)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
