"""Region datasets: builders on real photos, storage, transforms and sampling."""

import json
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torchvision import tv_tensors
from torchvision.transforms import v2

from roi_attention.cli import main
from roi_attention.data import (
    COCO_CLASSES,
    OPENSURFACES_MATERIALS,
    SIZE_BIN_NAMES,
    ClassBalancedSampler,
    CocoRegions,
    EmptyRegionError,
    OpenSurfacesRegions,
    RandomRoiCrop,
    RegionDataset,
    RoiResize,
    build_region_dataset,
    decode_mask,
    eval_transform,
    load_region_split,
    region_collate,
    size_bin,
    train_transform,
)
from roi_attention.examples import COFFEE_REGIONS, polygon_mask

from .conftest import SHARED_FIXTURES
from .data_fixtures import POLYGONS, quokka, reference_mask, write_coco_fixture, write_opensurfaces_fixture

DATA_CONFIG = dict(input_size=(4, 128, 128), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    fixture = write_coco_fixture(root / "src")
    report = build_region_dataset(
        CocoRegions(fixture["images_dir"], fixture["annotations"]),
        root / "coco_fixture",
        images_per_shard=2,
        progress=False,
    )
    return dict(fixture, out=root / "coco_fixture", report=report)


def test_coco_build_keeps_the_real_regions_and_counts_every_skip(coco):
    report, fixture = coco["report"], coco
    assert dict(report.skipped) == fixture["expected_skips"]
    assert report.regions_kept == len(fixture["references"])
    assert report.images_kept == len({image_id for image_id, _ in fixture["references"].values()})
    stored = json.loads((coco["out"] / "build_report.train.json").read_text())
    assert stored["skipped"] == fixture["expected_skips"]


def test_coco_regions_match_pycocotools_and_the_paper_bins(coco):
    # The folder's README declares both configs, so plain load_dataset reads it (a unique folder name here:
    # datasets keys the cache of local files by folder name and mtime, see load_region_split).
    regions = datasets.load_dataset(str(coco["out"]), "regions", split="train")
    images = datasets.load_dataset(str(coco["out"]), "images", split="train")
    assert regions.features["label"].names == list(COCO_CLASSES)
    assert regions.features["size_bin"].names == list(SIZE_BIN_NAMES)
    assert len(images) == len(set(images["image_id"])) == len(set(regions["image_id"]))  # each photo once
    sizes = {row["image_id"]: (row["height"], row["width"]) for row in images.remove_columns("image")}
    names = {
        "cup": "cup",
        "spoon": "spoon",
        "chelsea": "cat",
        "astronaut": "person",
        "rocket": "airplane",
        "quokka": "dog",
    }
    polygons = {**COFFEE_REGIONS, **POLYGONS, **({"quokka": quokka()[1]} if quokka() else {})}
    for row in regions:
        image_id, name = coco["references"][row["region_id"]]
        assert row["image_id"] == image_id
        assert COCO_CLASSES[row["label"]] == names[name]
        mask = decode_mask(row["mask"])
        if name == "chelsea":  # stored as RLE of the project's own rasterisation
            expected = polygon_mask(polygons[name], sizes[image_id][::-1])
        else:
            expected = reference_mask(polygons[name], sizes[image_id])
        assert np.array_equal(mask, expected)
        assert row["area"] == int(expected.sum())
        ys, xs = np.nonzero(expected)
        assert row["bbox"] == pytest.approx([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1])
        assert row["size_bin"] == size_bin(row["area"])
        assert not row["iscrowd"]


def test_images_are_stored_as_their_original_bytes(coco):
    images = load_region_split(coco["out"], "train")[1]
    for row in images:
        assert row["image"]["bytes"] == (coco["images_dir"] / row["file_name"]).read_bytes()


def test_crowd_regions_are_kept_on_request(coco, tmp_path):
    source = CocoRegions(coco["images_dir"], coco["annotations"], keep_crowd=True)
    report = build_region_dataset(source, tmp_path / "ds", progress=False)
    assert "crowd annotation (keep_crowd=False)" not in report.skipped
    regions = load_region_split(tmp_path / "ds", "train")[0]
    crowd = [row for row in regions if row["region_id"] == coco["crowd_id"]]
    assert len(crowd) == 1 and crowd[0]["iscrowd"] and crowd[0]["area"] == 80 * 100


def test_parallel_build_writes_the_same_rows(coco, tmp_path):
    source = CocoRegions(coco["images_dir"], coco["annotations"])
    build_region_dataset(source, tmp_path / "ds", num_proc=2, images_per_shard=2, progress=False)
    rows = lambda path: sorted(  # noqa: E731
        load_region_split(path, "train")[0].to_list(), key=lambda r: r["region_id"]
    )
    assert rows(tmp_path / "ds") == rows(coco["out"])


def test_a_second_split_joins_the_folder_and_the_first_is_untouched(coco, tmp_path):
    source = CocoRegions(coco["images_dir"], coco["annotations"])
    out = tmp_path / "ds"
    build_region_dataset(source, out, split="train", progress=False)
    before = {p.name: p.read_bytes() for p in (out / "regions").iterdir()}
    build_region_dataset(source, out, split="validation", progress=False)
    assert len(load_region_split(out, "validation")[0]) == coco["report"].regions_kept
    assert {p.name: p.read_bytes() for p in (out / "regions").iterdir() if p.name.startswith("train")} == before
    with pytest.raises(FileExistsError, match="already has split 'validation'"):
        build_region_dataset(source, out, split="validation", progress=False)


class _FailingSource(CocoRegions):
    def process(self, image_id):
        if image_id == 3:
            raise RuntimeError("disk on fire")
        return super().process(image_id)


def test_an_interrupted_build_leaves_nothing_that_looks_finished(coco, tmp_path):
    source = _FailingSource(coco["images_dir"], coco["annotations"])
    with pytest.raises(RuntimeError, match="disk on fire"):
        build_region_dataset(source, tmp_path / "ds", images_per_shard=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_is_not_a_dataset_is_refused(coco, tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a region dataset"):
        build_region_dataset(CocoRegions(coco["images_dir"], coco["annotations"]), tmp_path / "ds", progress=False)
    assert (tmp_path / "ds" / "notes.txt").read_text() == "mine"


def test_the_file_categories_mode_uses_the_files_classes(coco, tmp_path):
    source = CocoRegions(coco["images_dir"], coco["annotations"], categories="file")
    assert source.class_names == ["person", "airplane", "cat", "dog", "cup", "spoon"]
    build_region_dataset(source, tmp_path / "ds", progress=False)
    regions = load_region_split(tmp_path / "ds", "train")[0]
    assert regions.features["label"].names == source.class_names


def test_build_dataset_command(coco, tmp_path, capsys):
    out = tmp_path / "ds"
    args = ["build-dataset", "coco", "--images", str(coco["images_dir"]), "--annotations", str(coco["annotations"])]
    assert main([*args, "--out", str(out), "--split", "validation"]) == 0
    printed = capsys.readouterr().out
    assert f"kept {coco['report'].images_kept} images and {coco['report'].regions_kept} regions" in printed
    assert "skipped 1: unknown category id" in printed
    assert main([*args, "--out", str(tmp_path / "x"), "--split", "bad split"]) == 2
    assert (
        main(
            [
                "build-dataset",
                "coco",
                "--images",
                str(tmp_path / "nope"),
                "--annotations",
                "x.json",
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_opensurfaces_builder_finds_8_connected_material_regions(tmp_path):
    fixture = write_opensurfaces_fixture(tmp_path / "src")
    report = build_region_dataset(
        OpenSurfacesRegions(fixture["images_dir"], fixture["labels_dir"]), tmp_path / "ds", progress=False
    )
    assert dict(report.skipped) == {
        "label map missing": 1,
        "region smaller than min_area=64": 1,
        "unknown material index": 1,
    }
    regions = load_region_split(tmp_path / "ds", "train")[0]
    images = load_region_split(tmp_path / "ds", "train")[1]
    assert regions.features["label"].names == list(OPENSURFACES_MATERIALS)
    file_of = dict(zip(images["image_id"], images["file_name"], strict=True))
    found = Counter((file_of[r["image_id"]], OPENSURFACES_MATERIALS[r["label"]]) for r in regions)
    assert found == Counter(
        {("001.jpg", "Brick"): 2, ("001.jpg", "Foliage"): 1, ("001.jpg", "Stone"): 1, ("002.jpg", "Foliage"): 1}
    )
    for row in regions:
        labels = fixture["labels"][file_of[row["image_id"]]]
        mask = decode_mask(row["mask"]).astype(bool)
        assert np.all(labels[mask] == row["label"] + 1)
        components, _ = ndimage.label(labels == row["label"] + 1, structure=np.ones((3, 3)))
        assert len(np.unique(components[mask])) == 1  # one component, and all of it
        assert mask.sum() == (components == components[mask][0]).sum()


@pytest.mark.skipif(not (SHARED_FIXTURES / "opensurfaces_example").is_dir(), reason="../shared/fixtures is absent")
def test_the_authors_real_opensurfaces_label_maps(tmp_path):
    root = SHARED_FIXTURES / "opensurfaces_example" / "TrainVal_Set"
    report = build_region_dataset(
        OpenSurfacesRegions(root / "Images", root / "Annotations"), tmp_path / "ds", progress=False
    )
    assert report.images_kept == 4 and report.regions_kept >= 4
    regions = load_region_split(tmp_path / "ds", "train")[0]
    images = load_region_split(tmp_path / "ds", "train")[1]
    file_of = dict(zip(images["image_id"], images["file_name"], strict=True))
    for row in regions:
        label_map = np.asarray(Image.open(root / "Annotations" / f"{Path(file_of[row['image_id']]).stem}.png"))
        mask = decode_mask(row["mask"]).astype(bool)
        assert np.all(label_map[mask] == row["label"] + 1) and row["area"] >= 64


def _coverage_boundary(reference: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(reference) & ~ndimage.binary_erosion(reference)


def _painted(photo: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The photo with the green channel 0 inside the ROI and 255 outside (red and blue stay the photo's)."""
    painted = photo.copy()
    painted[..., 1] = np.where(mask > 0, 0, 255)
    return painted


def _photos_and_polygons():
    import skimage.data

    cases = [
        ("coffee", skimage.data.coffee(), COFFEE_REGIONS["spoon"]),
        ("rocket", skimage.data.rocket(), POLYGONS["rocket"]),
    ]
    if quokka() is not None:
        cases.append(("quokka", *quokka()))
    return cases


def test_eval_transform_keeps_mask_and_image_aligned_on_non_square_photos():
    transform = eval_transform(DATA_CONFIG)
    for name, photo, polygon in _photos_and_polygons():
        height, width = photo.shape[:2]
        mask = reference_mask(polygon, (height, width))
        image, out_mask = transform(
            tv_tensors.Image(torch.from_numpy(_painted(photo, mask)).permute(2, 0, 1)),
            tv_tensors.Mask(torch.from_numpy(mask)[None]),
        )
        assert set(out_mask.unique().tolist()) <= {0, 1}, "masks stay binary"
        # The reference: the polygon scaled like the photo, rasterised at the new size, placed like the photo.
        side = 128
        scale = side / max(height, width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        sx, sy = new_w / width, new_h / height
        expected = reference_mask([(x * sx, y * sy) for x, y in polygon], (new_h, new_w))
        top, left = (side - new_h) // 2, (side - new_w) // 2
        expected = np.pad(expected, ((top, side - new_h - top), (left, side - new_w - left)))
        got = out_mask[0].numpy()
        assert got.shape == expected.shape, name
        assert np.all((got != expected) <= _coverage_boundary(expected)), f"{name}: mask moved by over a pixel"
        # The region painted into the photo lands on the mask: the same place (antialiasing blurs the painted
        # edge but keeps its centre of mass) and shape.
        green = (image[1] * DATA_CONFIG["std"][1] + DATA_CONFIG["mean"][1]).numpy()
        # the padding is the mean colour, not painted
        green[:top], green[top + new_h :], green[:, :left], green[:, left + new_w :] = 1, 1, 1, 1
        painted, inside = np.clip(1 - green, 0, 1), got.astype(bool)
        assert ((painted > 0.5) & inside).sum() / ((painted > 0.5) | inside).sum() > 0.8, name
        assert np.allclose(ndimage.center_of_mass(painted), ndimage.center_of_mass(inside), atol=0.5), name


@pytest.mark.skipif(not (SHARED_FIXTURES / "coco_example").is_dir(), reason="../shared/fixtures is absent")
def test_the_authors_real_coco_masks_survive_the_transforms():
    transform = eval_transform(DATA_CONFIG)
    torch.manual_seed(0)
    train = train_transform(DATA_CONFIG)
    for folder in sorted((SHARED_FIXTURES / "coco_example").iterdir()):
        photo = torch.from_numpy(np.asarray(Image.open(folder / "Image.png").convert("RGB"))).permute(2, 0, 1)
        for mask_file in sorted(folder.glob("InputMask*.png")):
            mask = torch.from_numpy(np.asarray(Image.open(mask_file)) > 0).to(torch.uint8)[None]
            for t in (transform, train):
                image, out = t(tv_tensors.Image(photo), tv_tensors.Mask(mask))
                assert out.shape[-2:] == image.shape[-2:] == (128, 128)
                assert out.any(), f"{mask_file} vanished"


def test_resize_never_erases_a_small_roi():
    mask = torch.zeros(1, 1000, 1500, dtype=torch.uint8)
    mask[0, 501, 733] = 1
    image = torch.zeros(3, 1000, 1500, dtype=torch.uint8)
    _, out = RoiResize(100)(tv_tensors.Image(image), tv_tensors.Mask(mask))
    assert out.sum() == 1 and out[0, 50, 73] == 1


@pytest.mark.parametrize("seed", range(5))
def test_random_roi_crop_holds_the_whole_small_roi(seed):
    torch.manual_seed(seed)
    mask = torch.zeros(1, 300, 400, dtype=torch.uint8)
    mask[0, 120:170, 300:390] = 1  # 50x90, smaller than the 128 window
    _, out = RandomRoiCrop(128)(tv_tensors.Image(torch.zeros(3, 300, 400)), tv_tensors.Mask(mask))
    assert out.shape[-2:] == (128, 128) and out.sum() == mask.sum()


@pytest.mark.parametrize("seed", range(5))
def test_random_roi_crop_lies_inside_a_large_roi(seed):
    torch.manual_seed(seed)
    mask = torch.zeros(1, 300, 400, dtype=torch.uint8)
    mask[0, 20:280, 30:390] = 1
    _, out = RandomRoiCrop(128)(tv_tensors.Image(torch.zeros(3, 300, 400)), tv_tensors.Mask(mask))
    assert bool(out.all())


def test_random_roi_crop_refuses_an_empty_mask():
    with pytest.raises(EmptyRegionError):
        RandomRoiCrop(32)(tv_tensors.Image(torch.zeros(3, 64, 64)), tv_tensors.Mask(torch.zeros(1, 64, 64)))


def test_region_dataset_items_and_a_transform_that_loses_the_roi(coco):
    dataset = RegionDataset(coco["out"], "train", transform=train_transform(DATA_CONFIG))
    assert len(dataset) == coco["report"].regions_kept and dataset.class_names == list(COCO_CLASSES)
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["pixel_values"].shape == (4, 128, 128)
        assert set(item["pixel_values"][3].unique().tolist()) <= {0.0, 1.0} and item["pixel_values"][3].any()
    corner = v2.Compose([*eval_transform(DATA_CONFIG).transforms, v2.Lambda(lambda x: x[..., :2, :2])])
    spoon = next(
        i
        for i, r in enumerate(dataset.regions)
        if r["region_id"] in coco["references"] and coco["references"][r["region_id"]][1] == "spoon"
    )
    with pytest.raises(EmptyRegionError, match=str(dataset.regions[spoon]["region_id"])):
        RegionDataset(coco["out"], "train", transform=corner)[spoon]


def test_unknown_split_is_a_clear_error(coco):
    with pytest.raises(ValueError, match="no split 'test'"):
        RegionDataset(coco["out"], "test")


def _sampler_data():
    # class 0: image 1 with 1 region, image 2 with 9; class 1: one image with 2 regions; class 2: 88 regions.
    labels = [0] + [0] * 9 + [1, 1] + [2] * 88
    images = [1] + [2] * 9 + [3, 3] + [4] * 88
    return labels, images


def test_class_balanced_sampler_draws_class_then_image_then_region():
    labels, images = _sampler_data()
    draws = list(ClassBalancedSampler(labels, images, num_samples=30_000, seed=1))
    classes = Counter(labels[i] for i in draws)
    assert all(abs(classes[c] / len(draws) - 1 / 3) < 0.02 for c in range(3))
    class0_images = Counter(images[i] for i in draws if labels[i] == 0)
    assert abs(class0_images[1] / sum(class0_images.values()) - 0.5) < 0.03


def test_class_balanced_sampler_is_deterministic_and_splits_across_ranks():
    labels, images = _sampler_data()
    one = ClassBalancedSampler(labels, images, num_samples=100, seed=7)
    assert list(one) == list(ClassBalancedSampler(labels, images, num_samples=100, seed=7))
    one.set_epoch(1)
    assert list(one) != list(ClassBalancedSampler(labels, images, num_samples=100, seed=7))
    one.set_epoch(0)
    ranks = [list(ClassBalancedSampler(labels, images, 100, seed=7, rank=r, num_replicas=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 50
    interleaved = [index for pair in zip(*ranks, strict=True) for index in pair]
    assert interleaved == list(one)


def test_dataset_shards_hold_images_in_chunks(coco):
    photos = len(json.loads(coco["annotations"].read_text())["images"])
    shards = sorted(Path(coco["out"], "images").iterdir())
    assert len(shards) == -(-photos // 2)  # images_per_shard=2


@pytest.mark.parametrize("seed", range(4))
def test_train_transform_moves_image_and_mask_together(seed):
    torch.manual_seed(seed)
    transform = train_transform(DATA_CONFIG)
    for name, photo, polygon in _photos_and_polygons():
        mask = reference_mask(polygon, photo.shape[:2])
        image, out = transform(
            tv_tensors.Image(torch.from_numpy(_painted(photo, mask)).permute(2, 0, 1)),
            tv_tensors.Mask(torch.from_numpy(mask)[None]),
        )
        assert image.shape[-2:] == out.shape[-2:] == (128, 128)
        assert set(out.unique().tolist()) <= {0, 1}
        green = (image[1] * DATA_CONFIG["std"][1] + DATA_CONFIG["mean"][1]).numpy()
        painted, inside = np.clip(1 - green, 0, 1), out[0].numpy().astype(bool)
        assert inside.any(), name
        assert np.allclose(ndimage.center_of_mass(painted), ndimage.center_of_mass(inside), atol=0.75), name


def test_region_dataset_in_a_dataloader_with_workers_and_the_balanced_sampler(coco):
    dataset = RegionDataset(coco["out"], "train", transform=train_transform(DATA_CONFIG))
    sampler = ClassBalancedSampler(dataset.labels, dataset.regions["image_id"], num_samples=8, seed=0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=4, sampler=sampler, num_workers=2, collate_fn=region_collate
    )
    batches = list(loader)
    assert len(batches) == 2
    assert batches[0]["pixel_values"].shape == (4, 4, 128, 128)
    assert [int(i) for b in batches for i in b["region_id"]] == [dataset.regions[i]["region_id"] for i in sampler]
