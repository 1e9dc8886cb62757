"""`roi-attention predict --coco-annotations`: every region of a COCO-format file, bad entries skipped and counted."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from pycocotools.coco import COCO

from roi_attention.cli import main
from roi_attention.hub import load_model, save_model
from roi_attention.predict import decode_segmentation, predict_regions, read_photo

from .conftest import make_model, randomize_side_branch
from .data_fixtures import write_coco_fixture

LABELS = ["person", "airplane", "cat", "cup", "spoon"]  # all among the fixture's categories


@pytest.fixture(scope="module")
def coco_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("detections")
    fixture = write_coco_fixture(root / "coco")
    model = make_model("roi_resnet18_add_l3")
    randomize_side_branch(model)
    folder = save_model(model, root / "model", label_names=LABELS)
    return fixture, folder


def test_every_annotation_is_classified_as_predict_regions_would_and_bad_ones_are_counted(
    coco_and_model, tmp_path, capsys
):
    fixture, folder = coco_and_model
    out = tmp_path / "predictions.json"
    code = main(
        ["predict", "--model", str(folder), "--coco-annotations", str(fixture["annotations"]),
         "--images", str(fixture["images_dir"]), "--out", str(out), "--topk", "3"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    results = json.loads(out.read_text())
    coco = json.loads(fixture["annotations"].read_text())
    images = {image["id"]: image for image in coco["images"]}
    category_ids = {c["name"]: c["id"] for c in coco["categories"]}
    model = load_model(str(folder))
    # The reference: each region alone through predict_regions, the photo read here.
    photos = {}
    for result in results:
        info = images[result["image_id"]]
        annotation = next(
            a for a in coco["annotations"] if a["id"] == result["annotation_id"] and a["image_id"] == info["id"]
        )
        if info["id"] not in photos:
            photos[info["id"]] = read_photo(fixture["images_dir"] / info["file_name"])
        photo = photos[info["id"]]
        mask = decode_segmentation(annotation["segmentation"], photo.shape[:2])
        (alone,) = predict_regions(model, photo, [mask], topk=3)
        assert result["label"] == alone[0]["label"]
        assert result["score"] == pytest.approx(alone[0]["probability"], abs=1e-5)
        assert [p["label"] for p in result["topk"]] == [p["label"] for p in alone]
        assert result["category_id"] == category_ids[result["label"]]
        assert np.array_equal(decode_segmentation(result["segmentation"], photo.shape[:2]), mask)
    # Every annotation with a usable photo and a non-empty mask, crowd and unknown categories included.
    skipped = {"empty mask": 1, "mask outside the image": 1, "photo missing, unreadable or too large": 2}
    assert len(results) == len(coco["annotations"]) - sum(skipped.values())
    report = json.loads((tmp_path / "predictions.report.json").read_text())
    assert report["skipped"] == skipped
    assert report["regions_kept"] == len(results)
    assert f"classified {len(results)} regions of" in printed
    assert "skipped 2: photo missing, unreadable or too large" in printed
    # pycocotools reads the file as detection results, ready for COCOeval.
    ground_truth = COCO()
    ground_truth.dataset = coco
    ground_truth.createIndex()
    loaded = ground_truth.loadRes(str(out))
    assert len(loaded.anns) == len(results)


def test_a_file_that_is_not_coco_is_refused_and_nothing_is_written(coco_and_model, tmp_path, capsys):
    fixture, folder = coco_and_model
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 1}]))
    out = tmp_path / "predictions.json"
    args = ["predict", "--model", str(folder), "--images", str(fixture["images_dir"]), "--out", str(out)]
    assert main([*args, "--coco-annotations", str(bad)]) == 2
    assert "not a COCO-format file" in capsys.readouterr().err
    assert main(["predict", "--model", str(folder), "--coco-annotations", str(bad)]) == 2
    assert "needs --images" in capsys.readouterr().err
    assert not list(tmp_path.glob("predictions*"))


def test_photos_are_read_once_with_all_their_regions_together(coco_and_model, tmp_path, monkeypatch):
    from roi_attention import predict

    fixture, folder = coco_and_model
    model = load_model(str(folder))
    calls, reads = [], []
    classify, read = predict.predict_regions, predict.read_photo

    def counting(model, photo, masks, **kwargs):
        masks = list(masks)  # a generator: each mask decoded as its group is classified
        calls.append(len(masks))
        return classify(model, photo, masks, **kwargs)

    monkeypatch.setattr(predict, "predict_regions", counting)
    monkeypatch.setattr(predict, "read_photo", lambda path, *rest, **kw: reads.append(path) or read(path, *rest, **kw))
    out = tmp_path / "p.json"
    predict.predict_coco_annotations(model, fixture["annotations"], fixture["images_dir"], out, progress=False)
    per_photo = {}
    for result in json.loads(out.read_text()):
        per_photo[result["image_id"]] = per_photo.get(result["image_id"], 0) + 1
    assert sorted(calls) == sorted(per_photo.values()) and max(calls) > 1  # one call per photo, all its regions
    assert len(reads) == len(set(reads))  # each photo read once


@pytest.mark.slow
def test_under_accelerate_launch_two_processes_split_the_photos_and_write_one_complete_file(coco_and_model, tmp_path):
    """2 CPU processes give the single process's results file, in the same order, with one merged report, and
    a progress bar counting regions per second."""
    fixture, folder = coco_and_model
    arguments = ["predict", "--model", str(folder), "--coco-annotations", str(fixture["annotations"]),
                 "--images", str(fixture["images_dir"]), "--topk", "3"]  # fmt: skip
    assert main([*arguments, "--out", str(tmp_path / "one.json")]) == 0
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "roi_attention.cli"]  # fmt: skip
    result = subprocess.run(
        [*launch, *arguments, "--out", str(tmp_path / "two.json")],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert [(r["image_id"], r["annotation_id"], r["label"]) for r in two] == [
        (r["image_id"], r["annotation_id"], r["label"]) for r in one
    ]
    for single, split in zip(one, two, strict=True):
        assert split["score"] == pytest.approx(single["score"], abs=1e-5)
        assert split["segmentation"] == single["segmentation"]
    reports = [json.loads((tmp_path / f"{n}.report.json").read_text()) for n in ("one", "two")]
    assert reports[1] == reports[0] and reports[0]["images_kept"] >= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "one.report.json", "two.json", "two.report.json"]
    assert result.stdout.count("classified ") == 1  # the main process alone reports
    assert "region/s" in result.stderr


def _many_photos(fixture, root, copies: int):
    """The fixture's file with its photos listed ``copies`` times under new ids (a run of many photos)."""
    coco = json.loads(fixture["annotations"].read_text())
    images, annotations = [], []
    for copy in range(copies):
        offset = 1000 * (copy + 1)
        images += [dict(image, id=image["id"] + offset) for image in coco["images"]]
        annotations += [
            dict(entry, id=entry["id"] + offset, image_id=entry["image_id"] + offset)
            for entry in coco["annotations"]
            if isinstance(entry.get("image_id"), int)
        ]
    path = root / "many.json"
    path.write_text(json.dumps(dict(coco, images=images, annotations=annotations)))
    return path


def test_a_killed_run_resumes_to_the_file_an_uninterrupted_run_writes(coco_and_model, tmp_path):
    import signal
    import time

    fixture, folder = coco_and_model
    annotations = _many_photos(fixture, tmp_path, copies=12)
    arguments = ["predict", "--model", str(folder), "--coco-annotations", str(annotations),
                 "--images", str(fixture["images_dir"]), "--topk", "3"]  # fmt: skip
    assert main([*arguments, "--out", str(tmp_path / "whole.json")]) == 0
    # The same command killed (SIGKILL: no handler runs) once some photos are written.
    out = tmp_path / "killed.json"
    parts = tmp_path / ".killed.json.parts"
    run = subprocess.Popen(
        [sys.executable, "-m", "roi_attention.cli", *arguments, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        written = sum(p.read_text().count("\n") for p in parts.glob("part-*.jsonl")) if parts.is_dir() else 0
        if written >= 3:
            break
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not out.exists()
    lines = sum(p.read_text().count("\n") for p in parts.glob("part-*.jsonl"))
    assert 3 <= lines < len(json.loads(annotations.read_text())["images"])
    with open(parts / "part-0.jsonl", "a") as part:  # and a line the kill cut short
        part.write('{"image_id": 999999, "results": [{"image_')
    # Without --resume the earlier run's results are not thrown away.
    assert main([*arguments, "--out", str(out)]) == 2
    assert main([*arguments, "--out", str(out), "--resume"]) == 0
    assert out.read_bytes() == (tmp_path / "whole.json").read_bytes()
    reports = [json.loads((tmp_path / f"{name}.report.json").read_text()) for name in ("whole", "killed")]
    assert reports[0]["skipped"] == reports[1]["skipped"] and reports[0]["regions_kept"] == reports[1]["regions_kept"]
    assert not parts.exists()


def test_results_never_replace_a_file_unasked(coco_and_model, tmp_path, capsys):
    fixture, folder = coco_and_model
    copy = tmp_path / "annotations.json"
    shutil.copyfile(fixture["annotations"], copy)
    arguments = ["predict", "--model", str(folder), "--images", str(fixture["images_dir"])]
    assert main([*arguments, "--coco-annotations", str(copy), "--out", str(copy), "--overwrite"]) == 2
    assert "is the annotations file itself" in capsys.readouterr().err
    assert copy.read_bytes() == fixture["annotations"].read_bytes()
    out = tmp_path / "results.json"
    out.write_text("mine")
    assert main([*arguments, "--coco-annotations", str(copy), "--out", str(out)]) == 2
    assert "exists: --overwrite to replace it" in capsys.readouterr().err and out.read_text() == "mine"
    assert main([*arguments, "--coco-annotations", str(copy), "--out", str(out), "--resume"]) == 2
    assert out.read_text() == "mine"
    assert main([*arguments, "--coco-annotations", str(copy), "--out", str(tmp_path / "new.json"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main([*arguments, "--coco-annotations", str(copy), "--out", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())[0]["image_id"]
