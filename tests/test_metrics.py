"""region_accuracy against hand-computed cases, and the same metric through Hugging Face evaluate."""

import pytest

from roi_attention.data import SIZE_BIN_EDGES, SIZE_BIN_NAMES
from roi_attention.metrics import EVALUATE_METRIC, region_accuracy


def _bin(result, name):
    return result["size_bins"][SIZE_BIN_NAMES.index(name)]


def test_mean_per_class_and_pooled_differ_as_the_paper_defines_them():
    # class 0: 3 of 4 right; class 1: 0 of 1 right -> per class (0.75 + 0) / 2, pooled 3 / 5.
    result = region_accuracy([0, 0, 0, 1, 0], [0, 0, 0, 0, 1], [10, 20, 30, 40, 50], num_classes=3)
    assert result["mean_class_accuracy"] == pytest.approx(0.375)
    assert result["pooled_accuracy"] == pytest.approx(0.6)
    assert result["num_regions"] == 5 and result["num_classes"] == 2  # class 2 has no regions
    assert result["per_class"]["2"] == {"accuracy": None, "num_regions": 0}
    assert result["per_class"]["0"] == {"accuracy": 0.75, "num_regions": 4}
    assert result["confusion_matrix"] == [[3, 1, 0], [1, 0, 0], [0, 0, 0]]


def test_size_bins_use_the_paper_edges_with_empty_bins_and_absent_classes():
    areas = [999, 1000, 1999, 3000, 3000, 2_000_000]
    result = region_accuracy([0, 1, 1, 0, 2, 2], [0, 1, 0, 0, 1, 2], areas, num_classes=3)
    assert _bin(result, "0-1000") == dict(
        bin="0-1000", mean_class_accuracy=1.0, pooled_accuracy=1.0, num_regions=1, num_classes=1
    )
    # 1000-2000 holds class 1 (right) and class 0 (wrong): per class (1 + 0) / 2
    assert _bin(result, "1000-2000")["mean_class_accuracy"] == 0.5
    assert _bin(result, "1000-2000")["num_classes"] == 2
    # 2000-4000: class 0 right, class 1 wrong; class 2 absent from the bin and not averaged in
    assert _bin(result, "2000-4000")["mean_class_accuracy"] == 0.5
    assert _bin(result, "4000-8000") == dict(
        bin="4000-8000", mean_class_accuracy=None, pooled_accuracy=None, num_regions=0, num_classes=0
    )
    assert _bin(result, "500000-1000000")["num_regions"] == 1  # above the last edge folds into the last bin
    assert sum(b["num_regions"] for b in result["size_bins"]) == len(areas)


def test_a_single_class():
    result = region_accuracy([4, 4, 1], [4, 4, 4], [5, 5, 5], num_classes=5)
    assert result["mean_class_accuracy"] == result["pooled_accuracy"] == pytest.approx(2 / 3)
    assert result["num_classes"] == 1


def test_top5_and_class_names():
    result = region_accuracy(
        [0, 1], [2, 1], [1, 1], top5=[[0, 3, 2, 4, 5], [0, 2, 3, 4, 5]], class_names=list("abcdef")
    )
    assert result["top5_accuracy"] == 0.5 and result["pooled_accuracy"] == 0.5
    assert set(result["per_class"]) == set("abcdef")


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="one length"):
        region_accuracy([0, 1], [0], [1, 2])
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\)"):
        region_accuracy([0, 5], [0, 1], [1, 2], num_classes=2)


def test_no_regions_at_all():
    result = region_accuracy([], [], [], num_classes=2)
    assert result["mean_class_accuracy"] is None and result["num_regions"] == 0


def test_the_evaluate_metric_matches_the_function():
    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(EVALUATE_METRIC)
    predictions, references, areas = [0, 0, 1, 2, 2, 1], [0, 1, 1, 2, 0, 1], [10, 1500, 3000, 5e5, 70, 9e5]
    metric.add_batch(predictions=predictions[:3], references=references[:3], areas=areas[:3])
    metric.add_batch(predictions=predictions[3:], references=references[3:], areas=areas[3:])
    assert metric.compute(num_classes=3) == region_accuracy(predictions, references, areas, num_classes=3)


def test_size_bins_of_your_own_reach_the_metric_the_tables_and_the_plot():
    from roi_attention.data.size_bins import parse_size_bins
    from roi_attention.metrics.report import accuracy_by_size_figure, markdown_tables

    assert parse_size_bins("paper") == SIZE_BIN_EDGES
    scaled = parse_size_bins("scaled:96x96")  # 96*96 / (640*480) = 0.03 of the paper's edges
    assert scaled[:3] == (0.0, 30.0, 60.0) and len(scaled) == len(SIZE_BIN_EDGES)
    for bad in ("0,50,50", "-1,5", "fifty", "scaled:96", "7"):
        with pytest.raises(ValueError, match="expected 'paper', 'scaled:WxH'"):
            parse_size_bins(bad)
    edges = parse_size_bins("0,50,200,800")
    # Hand-computed: areas 10, 40 (bin 0-50), 60 (50-200), 900 and 5000 (fold into the last bin, 200-800).
    result = region_accuracy([0, 1, 1, 0, 2], [0, 0, 1, 0, 2], [10, 40, 60, 900, 5000], size_bin_edges=edges)
    assert [(b["bin"], b["num_regions"], b["pooled_accuracy"]) for b in result["size_bins"]] == [
        ("0-50", 2, 0.5),
        ("50-200", 1, 1.0),
        ("200-800", 2, 1.0),
    ]
    assert result["size_bin_edges"] == [0, 50, 200, 800]
    results = dict(dataset="d", split="validation", models={"m": dict(metrics=result, probes={})})
    table = markdown_tables(results)
    assert "| 0-50 | 50.0% (n=2) |" in table and "| 200-800 | 100.0% (n=2) |" in table
    axis = accuracy_by_size_figure(results).axes[1]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["0-50\nn=2", "50-200\nn=1", "200-800\nn=2"]
