"""Region classification accuracy as the paper reports it: per class and pooled, overall and per ROI size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.size_bins import SIZE_BIN_EDGES, bin_names, size_bin


def _accuracies(correct: np.ndarray, references: np.ndarray) -> dict[str, Any]:
    """Mean per-class accuracy (classes with regions) and pooled accuracy, with their counts."""
    if correct.size == 0:
        return dict(mean_class_accuracy=None, pooled_accuracy=None, num_regions=0, num_classes=0)
    classes = np.unique(references)
    per_class = [correct[references == c].mean() for c in classes]
    return dict(
        mean_class_accuracy=float(np.mean(per_class)),
        pooled_accuracy=float(correct.mean()),
        num_regions=int(correct.size),
        num_classes=int(classes.size),
    )


def region_accuracy(
    predictions: Sequence[int],
    references: Sequence[int],
    areas: Sequence[float],
    top5: Sequence[Sequence[int]] | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    size_bin_edges: Sequence[float] = SIZE_BIN_EDGES,
) -> dict[str, Any]:
    """Accuracy of region predictions, as in the paper's Tables 1-4.

    ``mean_class_accuracy``: the accuracy of each class averaged over the classes that have regions (Tables 1-2).
    ``pooled_accuracy``: the accuracy over all regions pooled (Tables 3-4, "per image" in the paper). Both are
    also given per size bin (``areas`` in pixels of the original image; ``size_bin_edges``, by default the
    paper's, are recorded as ``size_bin_edges``), each with its counts; an empty bin has ``None`` accuracies
    and zero counts. Also: per-class accuracy, pooled top-5 accuracy (when ``top5`` holds each region's five
    best classes) and the confusion matrix (rows: true class).
    """
    predictions, references = np.asarray(predictions, dtype=np.int64), np.asarray(references, dtype=np.int64)
    areas = np.asarray(areas, dtype=np.float64)
    if not (predictions.shape == references.shape == areas.shape) or predictions.ndim != 1:
        raise ValueError(
            f"predictions, references and areas must be 1-D and of one length, got shapes "
            f"{predictions.shape}, {references.shape}, {areas.shape}"
        )
    if num_classes is None:
        num_classes = (
            len(class_names)
            if class_names is not None
            else int(max(predictions.max(initial=-1), references.max(initial=-1)) + 1)
        )
    for name, values in (("predictions", predictions), ("references", references)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} must be class indices in [0, {num_classes}), got [{values.min()}, {values.max()}]"
            )
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    correct = predictions == references
    bins = np.array([size_bin(a, size_bin_edges) for a in areas], dtype=np.int64)
    result: dict[str, Any] = _accuracies(correct, references)
    result["size_bins"] = [
        dict(bin=name, **_accuracies(correct[bins == index], references[bins == index]))
        for index, name in enumerate(bin_names(size_bin_edges))
    ]
    result["size_bin_edges"] = list(size_bin_edges)
    result["per_class"] = {
        names[c]: dict(
            accuracy=float(correct[references == c].mean()) if (references == c).any() else None,
            num_regions=int((references == c).sum()),
        )
        for c in range(num_classes)
    }
    if top5 is not None:
        top5 = np.asarray(top5, dtype=np.int64)
        if top5.shape[0] != references.size:
            raise ValueError(f"top5 has {top5.shape[0]} rows for {references.size} regions")
        result["top5_accuracy"] = float((top5 == references[:, None]).any(axis=1).mean()) if references.size else None
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (references, predictions), 1)
    result["confusion_matrix"] = confusion.tolist()
    result["class_names"] = names
    return result
