"""Context scenes: reproducible, distinct classes per scene, masks that match their annotations."""

import json

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from roi_attention.data.scenes import (
    CLASS_HEIGHT,
    ENVIRONMENT_CLASSES,
    FASHION_MNIST_CLASSES,
    SceneConfig,
    load_fashion_mnist,
    write_scenes,
)

from .conftest import needs_fashion_mnist


@needs_fashion_mnist
def test_scenes_are_reproducible_and_their_annotations_match_the_pixels(tmp_path):
    config = SceneConfig(size=64, min_objects=2, max_objects=4, min_item=8, max_item=48)
    first = write_scenes(tmp_path / "a", 12, seed=5, config=config, progress=False)
    again = write_scenes(tmp_path / "b", 12, seed=5, config=config, progress=False)
    other = write_scenes(tmp_path / "c", 12, items="test", seed=5, config=config, progress=False)
    document = json.loads((first / "annotations.json").read_text())
    assert document == json.loads((again / "annotations.json").read_text())
    for image in document["images"]:
        a = np.asarray(Image.open(first / "images" / image["file_name"]))
        assert np.array_equal(a, np.asarray(Image.open(again / "images" / image["file_name"])))
        assert not np.array_equal(a, np.asarray(Image.open(other / "images" / image["file_name"])))
    assert [c["name"] for c in document["categories"]] == list(FASHION_MNIST_CLASSES)

    for image in document["images"]:
        objects = [a for a in document["annotations"] if a["image_id"] == image["id"]]
        labels = [a["category_id"] for a in objects]
        assert len(labels) == len(set(labels)) and 1 <= len(labels) <= 4  # distinct classes
        masks = [mask_utils.decode(a["segmentation"]).astype(bool) for a in objects]
        assert sum(m.sum() for m in masks) == np.logical_or.reduce(masks).sum()  # no overlaps
        for annotation, mask in zip(objects, masks, strict=True):
            assert annotation["area"] == mask.sum() > 0
            ys, xs = np.nonzero(mask)
            x, y, w, h = annotation["bbox"]
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    assert ENVIRONMENT_CLASSES.keys() == {i["scene"] for i in document["images"]} | ENVIRONMENT_CLASSES.keys()


@needs_fashion_mnist
def test_the_context_is_in_the_data(tmp_path):
    """Environments favour their classes and classes keep to their heights: the statistics say so."""
    config = SceneConfig(size=64, min_objects=2, max_objects=4, min_item=8, max_item=24)
    document = json.loads(
        (write_scenes(tmp_path / "s", 300, seed=1, config=config, progress=False) / "annotations.json").read_text()
    )
    scene_of = {i["id"]: i["scene"] for i in document["images"]}
    typical = [a["category_id"] - 1 in ENVIRONMENT_CLASSES[scene_of[a["image_id"]]] for a in document["annotations"]]
    assert 0.6 < np.mean(typical) < 0.95  # config.typical = 0.8, less where a scene runs out of typical classes
    heights = {}
    for a in document["annotations"]:
        heights.setdefault(a["category_id"] - 1, []).append((a["bbox"][1] + a["bbox"][3] / 2) / config.size)
    order = np.argsort(CLASS_HEIGHT)
    measured = [np.mean(heights[c]) for c in order if c in heights]
    assert measured[0] < 0.45 < 0.55 < measured[-1]


@needs_fashion_mnist
def test_fashion_mnist_reads_as_its_documented_shape():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10


@needs_fashion_mnist
def test_context_swapped_scenes_put_every_object_where_its_context_points_elsewhere(tmp_path):
    config = SceneConfig(size=64, min_objects=2, max_objects=4, min_item=8, max_item=24, swap_context=True)
    document = json.loads(
        (write_scenes(tmp_path / "s", 200, seed=1, config=config, progress=False) / "annotations.json").read_text()
    )
    scene_of = {i["id"]: i["scene"] for i in document["images"]}
    labels = [a["category_id"] - 1 for a in document["annotations"]]
    assert not any(
        label in ENVIRONMENT_CLASSES[scene_of[a["image_id"]]]
        for a, label in zip(document["annotations"], labels, strict=True)
    )  # no favoured class in its environment
    heights = {}
    for a in document["annotations"]:
        heights.setdefault(a["category_id"] - 1, []).append((a["bbox"][1] + a["bbox"][3] / 2) / config.size)
    order = np.argsort(CLASS_HEIGHT)  # the classes that sit highest in normal scenes sit lowest here
    measured = [np.mean(heights[c]) for c in order if c in heights]
    assert measured[0] > 0.55 > 0.45 > measured[-1]
