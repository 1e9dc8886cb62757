"""``region_accuracy`` for Hugging Face ``evaluate``: ``evaluate.load(roi_attention.metrics.EVALUATE_METRIC)``."""

import datasets
import evaluate

from roi_attention.metrics.accuracy import region_accuracy

_DESCRIPTION = """Region classification accuracy as in Eppel (arXiv 1812.00291), Tables 1-4: mean per-class
accuracy and pooled accuracy, overall and per ROI size bin (area in pixels of the original image), with
counts beside every figure, per-class accuracy, top-5 accuracy and the confusion matrix."""

_INPUTS = """
Args:
    predictions: predicted class per region. references: true class per region.
    areas: the region's area in pixels of the original image.
    top5 (optional): the five best classes of each region.
    num_classes, class_names (optional, keyword of compute): the class list.
"""

_FEATURES = {
    "predictions": datasets.Value("int64"),
    "references": datasets.Value("int64"),
    "areas": datasets.Value("float64"),
}


class RegionAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="@article{eppel2018roi, title={Classifying a specific image region using convolutional nets "
            "with an ROI mask as input}, author={Eppel, Sagi}, journal={arXiv:1812.00291}, year={2018}}",
            inputs_description=_INPUTS,
            features=[
                datasets.Features(_FEATURES),
                datasets.Features({**_FEATURES, "top5": datasets.Sequence(datasets.Value("int64"))}),
            ],
        )

    def _compute(
        self, predictions, references, areas, top5=None, num_classes=None, class_names=None, size_bin_edges=None
    ):
        edges = {} if size_bin_edges is None else dict(size_bin_edges=size_bin_edges)
        return region_accuracy(
            predictions, references, areas, top5, num_classes=num_classes, class_names=class_names, **edges
        )
