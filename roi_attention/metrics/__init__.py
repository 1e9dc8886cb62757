"""Metrics of region classification."""

from pathlib import Path

from .accuracy import region_accuracy

EVALUATE_METRIC = str(Path(__file__).parent / "region_accuracy_metric")
"""Path for ``evaluate.load(EVALUATE_METRIC)``: the same metric through Hugging Face ``evaluate``, offline."""

__all__ = ["EVALUATE_METRIC", "region_accuracy"]
