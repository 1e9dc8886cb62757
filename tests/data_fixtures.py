"""Region-dataset fixtures built at test time from photos that installed packages ship (nothing committed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from roi_attention.examples import COFFEE_REGIONS, polygon_mask

skimage_data = pytest.importorskip("skimage.data")

# Rough outlines (x, y) the project draws around objects of scikit-image's photos.
POLYGONS = {
    "chelsea": [(70, 40), (250, 10), (420, 60), (440, 290), (60, 295), (40, 150)],
    "astronaut": [(150, 40), (330, 30), (400, 200), (480, 511), (90, 511), (110, 200)],
    "rocket": [(300, 60), (340, 60), (350, 300), (360, 420), (280, 420), (290, 300)],
}
CATEGORY = {"cup": 47, "spoon": 50, "chelsea": 17, "astronaut": 1, "rocket": 5, "quokka": 18}


def quokka() -> tuple[np.ndarray, list[tuple[float, float]]] | None:
    """imgaug's quokka photo and its real polygon, read from the package's files (imgaug is not imported)."""
    spec = importlib.util.find_spec("imgaug")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / "quokka.jpg").is_file():
        return None
    annotations = json.loads((folder / "quokka_annotations.json").read_text())
    polygon = [(p["x"], p["y"]) for p in annotations["polygons"][0]["keypoints"]]
    return np.asarray(Image.open(folder / "quokka.jpg").convert("RGB")), polygon


def flat(polygon) -> list[float]:
    return [float(v) for point in polygon for v in point]


def write_coco_fixture(root: Path) -> dict:
    """A COCO instances folder of real photos with polygons, RLE and crowd annotations and degenerate cases.

    Returns the paths and what a correct build keeps and skips.
    """
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    images, annotations, references = [], [], {}
    next_id = iter(range(1, 1000))

    def add_image(name: str, photo: np.ndarray) -> int:
        image_id = len(images) + 1
        Image.fromarray(photo).save(images_dir / name, quality=95)
        images.append(dict(id=image_id, file_name=name, height=photo.shape[0], width=photo.shape[1]))
        return image_id

    def add_polygon(image_id: int, polygon, category: int, ann_id: int | None = None, **extra) -> int:
        ann_id = ann_id or next(next_id)
        annotation = dict(id=ann_id, image_id=image_id, category_id=category, segmentation=[flat(polygon)])
        annotations.append({"iscrowd": 0, "bbox": [0, 0, 1, 1], "area": 1.0, **annotation, **extra})
        return ann_id

    coffee = skimage_data.coffee()
    coffee_id = add_image("coffee.jpg", coffee)
    for name in ("cup", "spoon"):
        references[add_polygon(coffee_id, COFFEE_REGIONS[name], CATEGORY[name])] = (coffee_id, name)
    # A crowd region as uncompressed RLE (skipped unless keep_crowd).
    crowd = np.zeros(coffee.shape[:2], dtype=np.uint8)
    crowd[300:380, 20:120] = 1
    runs = mask_utils.encode(np.asfortranarray(crowd))
    uncompressed = {"size": list(runs["size"]), "counts": _uncompressed_counts(crowd)}
    crowd_id = next(next_id)
    annotations.append(
        dict(
            id=crowd_id,
            image_id=coffee_id,
            category_id=CATEGORY["cup"],
            segmentation=uncompressed,
            iscrowd=1,
            bbox=[20, 300, 100, 80],
            area=8000.0,
        )
    )

    for name in ("chelsea", "astronaut", "rocket"):
        photo = getattr(skimage_data, name)()
        image_id = add_image(f"{name}.png" if name == "rocket" else f"{name}.jpg", photo)
        if name == "chelsea":  # stored as compressed RLE
            mask = polygon_mask(POLYGONS[name], (photo.shape[1], photo.shape[0]))
            rle = mask_utils.encode(np.asfortranarray(mask))
            ann_id = next(next_id)
            annotations.append(
                dict(
                    id=ann_id,
                    image_id=image_id,
                    category_id=CATEGORY[name],
                    iscrowd=0,
                    segmentation={"size": rle["size"], "counts": rle["counts"].decode()},
                    bbox=[0, 0, 1, 1],
                    area=1.0,
                )
            )
            references[ann_id] = (image_id, name)
        else:
            references[add_polygon(image_id, POLYGONS[name], CATEGORY[name])] = (image_id, name)

    quokka_data = quokka()
    if quokka_data is not None:
        photo, polygon = quokka_data
        image_id = add_image("quokka.jpg", photo)
        references[add_polygon(image_id, polygon, CATEGORY["quokka"])] = (image_id, "quokka")

    # Degenerate input, each skipped and counted.
    astronaut_id = images[2]["id"]
    add_polygon(astronaut_id, [(10, 10), (50, 10), (90, 10)], 1)  # collinear: empty mask
    add_polygon(astronaut_id, [(600, 600), (700, 600), (700, 700)], 1, bbox=[600, 600, 100, 100])  # outside
    add_polygon(astronaut_id, POLYGONS["astronaut"], 999)  # unknown category
    duplicate = next(iter(references))
    add_polygon(astronaut_id, POLYGONS["astronaut"], 1, ann_id=duplicate)  # duplicate id
    missing_id = len(images) + 1
    images.append(dict(id=missing_id, file_name="missing.jpg", height=100, width=100))
    add_polygon(missing_id, [(1, 1), (50, 1), (50, 50)], 1)
    truncated_id = add_image("truncated.jpg", skimage_data.rocket())
    (images_dir / "truncated.jpg").write_bytes((images_dir / "truncated.jpg").read_bytes()[:3000])
    add_polygon(truncated_id, [(1, 1), (50, 1), (50, 50)], 1)
    add_image("no_regions.jpg", skimage_data.chelsea())

    categories = [
        dict(id=i, name=n)
        for i, n in [(1, "person"), (5, "airplane"), (17, "cat"), (18, "dog"), (47, "cup"), (50, "spoon")]
    ]
    path = root / "instances.json"
    path.write_text(json.dumps(dict(images=images, annotations=annotations, categories=categories)))
    return dict(
        images_dir=images_dir,
        annotations=path,
        references=references,
        crowd_id=crowd_id,
        expected_skips={
            "crowd annotation (keep_crowd=False)": 1,
            "empty mask": 1,
            "mask outside the image": 1,
            "unknown category id": 1,
            "duplicate annotation id": 1,
            "image file missing": 1,
            "image file unreadable, truncated or too large": 1,
            "region of a skipped image": 2,
            "image without a kept region": 1,
        },
    )


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths over the column-major flattened mask, starting with zeros."""
    pixels = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in pixels:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return counts


def reference_mask(polygon, size: tuple[int, int]) -> np.ndarray:
    """pycocotools' rasterisation of a polygon, independent of the builder's code path."""
    height, width = size
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([flat(polygon)], height, width)))


def write_opensurfaces_fixture(root: Path) -> dict:
    """Two photos made of scikit-image's real textures with label maps in the author's format."""
    images_dir, labels_dir = root / "Images", root / "Annotations"
    images_dir.mkdir(parents=True)
    labels_dir.mkdir()
    brick, grass, gravel = (skimage_data.brick(), skimage_data.grass(), skimage_data.gravel())
    labels = np.zeros((200, 300), dtype=np.uint8)
    labels[:, :150] = 1  # Brick
    labels[:100, 150:] = 11  # Foliage
    labels[100:, 150:] = 34  # Stone
    labels[10:30, 200:220] = 1  # a second brick component, inside the foliage
    labels[30:50, 220:240] = 1  # touching it only at a corner: the same 8-connected component
    labels[150:155, 200:205] = 1  # a 25-pixel speck, below min_area
    labels[180:200, 0:20] = 0  # unlabelled
    photo = np.zeros((200, 300, 3), dtype=np.uint8)
    for value, texture in ((1, brick), (11, grass), (34, gravel)):
        photo[labels == value] = np.repeat(texture[:200, :300, None], 3, axis=2)[labels == value]
    Image.fromarray(photo).save(images_dir / "001.jpg", quality=95)
    Image.fromarray(labels).save(labels_dir / "001.png")
    second = np.full((120, 160), 11, dtype=np.uint8)
    second[60:, :] = 50  # not a material index
    Image.fromarray(np.repeat(grass[:120, :160, None], 3, axis=2)).save(images_dir / "002.jpg")
    Image.fromarray(second).save(labels_dir / "002.png")
    Image.fromarray(photo).save(images_dir / "003.jpg")  # no label map
    return dict(images_dir=images_dir, labels_dir=labels_dir, labels={"001.jpg": labels, "002.jpg": second})
