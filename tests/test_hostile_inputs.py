"""Input as a hostile user or a broken detector writes it, through the command line as a subprocess (a crash of a
native decoder fails the test instead of killing the run): every case a clear error (exit 2) or a counted skip,
nothing read outside the images folder, memory that does not grow with the regions of a photo."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from roi_attention.hub import save_model
from roi_attention.predict import decode_segmentation, predict_regions, read_photo

from .conftest import make_model, randomize_side_branch

REPO = Path(__file__).resolve().parents[1]
LABELS = ["cat", "dog", "cup", "spoon", "person"]
NAN_POLYGON = "[[NaN,10,100,10,100,100]]"  # the 31 bytes that killed the server


def _run(*args: str, memory_gb: int = 6) -> subprocess.CompletedProcess:
    """``roi-attention ARGS`` in a subprocess under an address-space limit (the NaN polygon once took 21 GB),
    its peak resident memory (MB) printed last on stderr."""
    code = (
        "import atexit, resource, sys, runpy; "
        "atexit.register(lambda: print('peak_rss_mb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, "
        "file=sys.stderr)); sys.argv = ['roi-attention', *sys.argv[1:]]; runpy.run_module('roi_attention.cli', "
        "run_name='__main__')"
    )
    limit = f"ulimit -v {memory_gb * 1024 * 1024}; "
    command = limit + " ".join(map(_quote, [sys.executable, "-c", code, *args]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=600)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _peak_mb(run: subprocess.CompletedProcess) -> int:
    return int(run.stderr.rsplit("peak_rss_mb", 1)[1].split()[0])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A small ROI model that sees photos at 64x64, saved as a folder."""
    model = make_model("roi_resnet18_add_l1", pretrained_cfg_overlay=dict(input_size=(3, 64, 64)))
    randomize_side_branch(model)
    return save_model(model, tmp_path_factory.mktemp("model") / "roi", label_names=LABELS)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Real photos, and the images an attacker uploads: a decompression bomb (30000x30000), a 17 KB 1-bit PNG of
    12000x12000, text named .png."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    paths = {"chelsea": folder / "chelsea.png", "coffee": folder / "coffee.jpg"}
    Image.fromarray(data.chelsea()).save(paths["chelsea"])
    Image.fromarray(data.coffee()).save(paths["coffee"], quality=90)
    paths["bomb"] = folder / "bomb.png"
    Image.new("1", (30000, 30000)).save(paths["bomb"], optimize=True)
    paths["large"] = folder / "large.png"
    Image.new("1", (12000, 12000)).save(paths["large"], optimize=True)
    paths["text"] = folder / "text.png"
    paths["text"].write_text("not an image")
    return paths


@pytest.fixture(scope="module")
def baseline(model_dir, photos, tmp_path_factory) -> subprocess.CompletedProcess:
    """The same command on a real photo: its peak memory is the reference."""
    mask = tmp_path_factory.mktemp("baseline") / "mask.json"
    mask.write_text("[[1,1,5,1,5,5]]")
    run = _run("predict", "--model", str(model_dir), "--image", str(photos["chelsea"]), "--mask", str(mask))
    assert run.returncode == 0, run.stderr[-2000:]
    return run


def test_the_bombs_are_tiny_files_of_huge_images(photos):
    assert photos["large"].stat().st_size < 100_000 and photos["bomb"].stat().st_size < 2_000_000
    for name, side in (("bomb", 30000), ("large", 12000)):  # the PNG header's width and height
        assert struct.unpack(">II", photos[name].read_bytes()[16:24]) == (side, side)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (NAN_POLYGON, "polygon coordinates must be finite numbers"),
        ("[[10,10,1e300,10,100,100]]", "must lie within a photo's size"),
        ('{"size": [300, 451], "counts": [1000, 50]}', "RLE counts sum to 1050, not height x width = 135300"),
        ('{"size": [300, 451], "counts": [-5, 135305]}', "RLE counts must be non-negative integers"),
        ('{"size": [300, 451], "counts": "12"}', "RLE counts sum to 3, not"),
        ('{"size": [300, 451], "counts": "PPP"}', "end inside a number"),
        ("[[10,10,20]]", "at least 3 (x, y) points"),
        ("[" * 100_000 + "]" * 100_000, "is not valid JSON"),
    ],
    ids=["nan", "huge", "short-rle", "negative-rle", "short-compressed", "unfinished-compressed", "two-points", "json"],
)
def test_a_bad_mask_file_is_a_clear_error_not_a_crash(model_dir, photos, tmp_path, mask, message):
    path = tmp_path / "mask.json"
    path.write_text(mask)
    run = _run("predict", "--model", str(model_dir), "--image", str(photos["chelsea"]), "--mask", str(path))
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    assert message in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]


@pytest.mark.parametrize(
    ("photo", "message"),
    [
        ("bomb", "too large to decode safely"),
        ("large", "12000x12000, 144,000,000 pixels: more than the 64,000,000 accepted"),
        ("text", "is not an image file PIL can read"),
    ],
)
def test_a_huge_or_false_photo_is_refused_before_it_is_decoded(model_dir, photos, baseline, tmp_path, photo, message):
    mask = tmp_path / "mask.json"
    mask.write_text("[[1,1,5,1,5,5]]")
    run = _run("predict", "--model", str(model_dir), "--image", str(photos[photo]), "--mask", str(mask))
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
    # Against the same command on a real photo: the 12000x12000 photo decoded as RGB alone would be 412 MB more.
    assert _peak_mb(run) < _peak_mb(baseline) + 150, (_peak_mb(run), _peak_mb(baseline))


def test_the_pixel_limit_is_a_setting(model_dir, photos, tmp_path):
    mask = tmp_path / "mask.png"
    Image.fromarray(np.pad(np.ones((20, 20), np.uint8) * 255, ((100, 180), (100, 331)))).save(mask)
    args = ("predict", "--model", str(model_dir), "--image", str(photos["chelsea"]), "--mask", str(mask), "--json")
    os.environ["ROI_ATTENTION_MAX_PIXELS"] = "100000"  # chelsea is 451x300 = 135,300 pixels
    try:
        refused = _run(*args)
    finally:
        del os.environ["ROI_ATTENTION_MAX_PIXELS"]
    assert refused.returncode == 2 and "more than the 100,000 accepted" in refused.stderr, refused.stderr[-2000:]
    accepted = _run(*args)
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    assert json.loads(accepted.stdout)[0]["predictions"][0]["label"] in LABELS


def _coco(photos_dir: Path, images: list[dict], annotations: list[dict], path: Path) -> Path:
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(LABELS)]
    path.write_text(json.dumps(dict(images=images, annotations=annotations, categories=categories)))
    return path


def test_a_hostile_coco_file_gives_counted_skips_and_never_reads_outside_the_images_folder(model_dir, photos, tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    chelsea = read_photo(photos["chelsea"])
    Image.fromarray(chelsea).save(images_dir / "chelsea.png")
    secret = tmp_path / "secret.png"  # a real image outside the folder: must not be opened
    Image.fromarray(chelsea).save(secret)
    (images_dir / "link.png").symlink_to(secret)
    (images_dir / "inner.png").symlink_to(images_dir / "chelsea.png")  # a symlink inside the folder is fine
    height, width = chelsea.shape[:2]
    images = [
        dict(id=1, file_name="chelsea.png", width=width, height=height),
        dict(id=2, file_name="../secret.png", width=width, height=height),
        dict(id=3, file_name=str(secret), width=width, height=height),
        dict(id=4, file_name="link.png", width=width, height=height),
        dict(id=5, file_name="../does-not-exist.png", width=width, height=height),
        dict(id=6, file_name="inner.png", width=width, height=height),
        dict(id=7, file_name="bomb.png"),
    ]
    (images_dir / "bomb.png").symlink_to(photos["bomb"])  # outside: refused before it is even opened
    good = [[100, 100, 200, 100, 200, 200, 100, 200]]
    annotations = [
        dict(id=1, image_id=1, segmentation=good),
        dict(id=2, image_id=1, segmentation=json.loads(NAN_POLYGON)),
        dict(id=3, image_id=1, segmentation=dict(size=[height, width], counts=[10, 20])),  # short
        dict(id=4, image_id=1, segmentation=dict(size=[height, width], counts=[-1, height * width + 1])),
        dict(id=5, image_id=1, segmentation=dict(size=[height, width], counts="0" * 10)),
        dict(id=6, image_id=1, segmentation=[[1e9, 0, 1e9, 1, 0, 1e9]]),
        *[dict(id=10 + i, image_id=i, segmentation=good) for i in range(2, 8)],
    ]
    coco = _coco(images_dir, images, annotations, tmp_path / "hostile.json")
    out = tmp_path / "predictions.json"
    run = _run("predict", "--model", str(model_dir), "--coco-annotations", str(coco), "--images", str(images_dir),
               "--out", str(out))  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "predictions.report.json").read_text())
    assert report["skipped"] == {
        "malformed segmentation": 5,
        "file_name outside the images folder": 5,  # ../secret, the absolute path, link.png, ../does-not-exist, bomb
    }, report
    outside = report["examples"]["file_name outside the images folder"]
    # One message whether or not the outside file exists: it tells nothing about the server's files.
    pattern = re.compile(r"image \d+: file_name '[^']*' is not a relative path inside the images folder")
    assert len(outside) == 5 and all(pattern.fullmatch(m) for m in outside), outside
    results = json.loads(out.read_text())
    assert sorted(r["annotation_id"] for r in results) == [1, 16]  # chelsea's good region, and through inner.png
    from roi_attention.hub import load_model

    model = load_model(str(model_dir))
    mask = decode_segmentation(good, (height, width))
    (alone,) = predict_regions(model, chelsea, [mask], topk=5)
    for result in results:
        assert result["label"] == alone[0]["label"] and result["score"] == pytest.approx(alone[0]["probability"])


@pytest.fixture(scope="module")
def shared_trunk_model_dir(tmp_path_factory) -> Path:
    """``add_l3`` at 64x64: the regions share the trunk, so 5000 of them take seconds, not minutes."""
    model = make_model("roi_resnet18_add_l3", pretrained_cfg_overlay=dict(input_size=(3, 64, 64)))
    randomize_side_branch(model)
    return save_model(model, tmp_path_factory.mktemp("model_l3") / "roi", label_names=LABELS)


def test_five_thousand_regions_of_one_photo_take_no_more_memory_than_ten(shared_trunk_model_dir, tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(images_dir / "tiny.png")
    runs = {}
    for count in (10, 5000):
        annotations = []
        for index in range(count):
            x, y = rng.integers(0, 6, 2).tolist()
            annotations.append(dict(id=index, image_id=1, segmentation=[[x, y, x + 2, y, x + 2, y + 2, x, y + 2]]))
        coco = _coco(images_dir, [dict(id=1, file_name="tiny.png", width=8, height=8)], annotations,
                     tmp_path / f"many{count}.json")  # fmt: skip
        out = tmp_path / f"predictions{count}.json"
        runs[count] = _run("predict", "--model", str(shared_trunk_model_dir), "--coco-annotations", str(coco),
                           "--images", str(images_dir), "--out", str(out))  # fmt: skip
        assert runs[count].returncode == 0, runs[count].stderr[-3000:]
        assert len(json.loads(out.read_text())) == count
    # All 5000 regions in one batch at 64x64 would be 5000 x 4 x 64 x 64 floats: 328 MB.
    assert _peak_mb(runs[5000]) - _peak_mb(runs[10]) < 120, (_peak_mb(runs[10]), _peak_mb(runs[5000]))


def test_the_regions_of_a_16_megapixel_photo_cost_their_masks_and_one_copy(model_dir, tmp_path):
    """24 regions of a 4000x4000 photo, each too small for the 64x64 input (it vanishes when shrunk and is
    max-pooled), against one such region, the model loaded in both runs: each further region costs its decoded mask
    and one stacked copy, one byte a pixel each (measured: +0.7 GB for the 23 more, the bound 0.8 GB). Before, the
    stack was resized whole and went float32 whole when a mask vanished: +3.5 GB."""
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    side = 4000
    ramp = np.linspace(0, 255, side, dtype=np.float32).astype(np.uint8)
    Image.fromarray(np.stack(np.broadcast_arrays(ramp[None], ramp[:, None], ramp[None]), -1)).save(
        images_dir / "big.png", compress_level=1
    )
    runs = {}
    for count in (1, 24):
        boxes = [(100 + 150 * i, 200 + 120 * i) for i in range(count)]
        annotations = [
            dict(id=i, image_id=1, segmentation=[[x, y, x + 3, y, x + 3, y + 3, x, y + 3]])
            for i, (x, y) in enumerate(boxes)
        ]
        coco = _coco(images_dir, [dict(id=1, file_name="big.png", width=side, height=side)], annotations,
                     tmp_path / f"regions{count}.json")  # fmt: skip
        out = tmp_path / f"predictions{count}.json"
        runs[count] = _run("predict", "--model", str(model_dir), "--coco-annotations", str(coco),
                           "--images", str(images_dir), "--out", str(out), memory_gb=16)  # fmt: skip
        assert runs[count].returncode == 0, runs[count].stderr[-3000:]
        assert len(json.loads(out.read_text())) == count
    added = _peak_mb(runs[24]) - _peak_mb(runs[1])
    print(f"peak RSS: one region {_peak_mb(runs[1])} MB, 24 regions {_peak_mb(runs[24])} MB")
    assert added < 23 * 2 * side * side / 2**20 * 1.1, (_peak_mb(runs[1]), _peak_mb(runs[24]))


def test_a_hostile_coco_file_gives_counted_skips_when_building_a_dataset(photos, tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    chelsea = read_photo(photos["chelsea"])
    Image.fromarray(chelsea).save(images_dir / "chelsea.png")
    Image.fromarray(chelsea).save(tmp_path / "secret.png")
    height, width = chelsea.shape[:2]
    images = [
        dict(id=1, file_name="chelsea.png", width=width, height=height),
        dict(id=2, file_name="../secret.png", width=width, height=height),
    ]
    good = [[100, 100, 200, 100, 200, 200, 100, 200]]
    annotations = [
        dict(id=1, image_id=1, category_id=1, segmentation=good, iscrowd=0),
        dict(id=2, image_id=1, category_id=1, segmentation=json.loads(NAN_POLYGON), iscrowd=0),
        dict(id=3, image_id=1, category_id=1, segmentation=dict(size=[height, width], counts=[5, 5]), iscrowd=0),
        dict(id=4, image_id=2, category_id=1, segmentation=good, iscrowd=0),
    ]
    coco = _coco(images_dir, images, annotations, tmp_path / "instances.json")
    out = tmp_path / "dataset"
    run = _run("build-dataset", "coco", "--images", str(images_dir), "--annotations", str(coco), "--out", str(out),
               "--categories", "file")  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "build_report.train.json").read_text())
    assert report["regions_kept"] == 1 and report["images_kept"] == 1, report
    assert report["skipped"]["malformed segmentation"] == 2
    assert report["skipped"]["file_name outside the images folder"] == 1


def test_fuzzed_polygons_and_rle_give_a_clear_error_or_the_right_mask():
    """Hypothesis over polygons and RLE (tests/fuzz_segmentation.py) in a subprocess with a memory limit."""
    script = REPO / "tests" / "fuzz_segmentation.py"
    command = f"ulimit -v {6 * 1024 * 1024}; {_quote(sys.executable)} {_quote(str(script))} 250"
    run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.returncode, run.stdout[-2000:], run.stderr[-3000:])
    assert run.stdout.count("no crash") == 6


def test_a_segmentation_of_too_many_polygons_or_points_is_refused_before_pycocotools_merges_it():
    """pycocotools merges polygons in time quadratic in their number (40k polygons: 7 s holding the GIL), so one
    region's polygons and points are bounded; real annotations have a few."""
    from roi_attention.data.inputs import MAX_POLYGONS, MAX_VERTICES, InputFileError, decode_segmentation

    tiny = [1, 1, 3, 1, 3, 3]
    with pytest.raises(InputFileError, match=f"{MAX_POLYGONS + 1:,} polygons, more than the {MAX_POLYGONS:,}"):
        decode_segmentation([tiny] * (MAX_POLYGONS + 1), (2000, 2000))
    assert decode_segmentation([tiny] * MAX_POLYGONS, (2000, 2000)).sum() > 0
    circle = np.linspace(0, 2 * np.pi, MAX_VERTICES + 1, endpoint=False)
    points = np.stack([1000 + 900 * np.cos(circle), 1000 + 900 * np.sin(circle)], axis=1).flatten().tolist()
    with pytest.raises(InputFileError, match=f"{MAX_VERTICES + 1:,} polygon points"):
        decode_segmentation([points], (2000, 2000))
