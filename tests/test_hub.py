"""The Hub, for real, on loopback: pushes go through huggingface_hub to the upload server in hub_server.py,
pulls come from olah serving the same git repositories. Processes that talk to them run with HF_ENDPOINT set
and HF_HUB_OFFLINE=0; this test process stays offline."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from roi_attention.data import CocoRegions, RegionDataset, build_region_dataset
from roi_attention.evaluation import evaluate_models
from roi_attention.hub import check_model_folder, publish, save_model, write_model_card
from roi_attention.hub.cards import RESULTS_NAME
from roi_attention.models import VARIANTS

from .data_fixtures import write_coco_fixture
from .hub_server import (
    FaultyPull,
    OlahMirror,
    UploadHub,
    commit_files,
    free_port,
    git,
    hub_env,
    lfs_object_path,
    published_bytes,
)

ORG = "roi-attention"
PAPER_VARIANTS = [name for name, variant in VARIANTS.items() if variant.merge]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    mirrors = root / "mirrors"
    mirrors.mkdir()
    upload = UploadHub(mirrors)
    olah = OlahMirror(root, mirrors)
    pull = FaultyPull(olah.endpoint)
    yield dict(root=root, mirrors=mirrors, upload=upload, olah=olah, pull=pull)
    pull.close()
    upload.close()
    olah.close()


def run_python(code: str, endpoint: str, cache: Path, cwd: Path | None = None, offline: bool = False):
    env = hub_env(endpoint, cache)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def run_cli(args: list[str], endpoint: str, cache: Path):
    command = [sys.executable, "-m", "roi_attention.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=hub_env(endpoint, cache), timeout=600)


def last_json(run) -> dict:
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def saved_model(folder: Path, name: str, seed: int, **kwargs) -> Path:
    """A model with every weight random (so that a wrong tensor shows), saved as a folder."""
    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.05)
    return save_model(model, folder, overwrite=True)


def _compare_pulled(specs: dict[str, Path]) -> str:
    """Code that loads each spec with timm and prints whether its weights equal the local folder's, bit for bit."""
    folders = {spec: str(folder) for spec, folder in specs.items()}
    return f"""
        import json, timm, torch
        import roi_attention
        from safetensors.torch import load_file
        out = {{}}
        for spec, folder in {folders!r}.items():
            expected = load_file(folder + "/model.safetensors")
            state = timm.create_model(spec, pretrained=True).state_dict()
            out[spec] = state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
        print(json.dumps(out))
    """


@pytest.mark.slow
def test_every_variant_round_trips_through_hf_hub_ids_and_the_offline_cache(hub, tmp_path):
    local = {}
    for variant in VARIANTS:  # every variant, by its hf-hub id; 18 MB each, so through LFS
        name = f"roi_tf_efficientnet_lite0_{variant}"
        local[f"hf-hub:{ORG}/{name}"] = saved_model(tmp_path / name, name, seed=len(local), num_classes=3)
    pushes = {str(folder): spec.split(":", 1)[1] for spec, folder in local.items()}
    push = run_python(
        f"""
        import json
        from roi_attention.hub import publish
        print(json.dumps({{folder: publish(folder, repo) for folder, repo in {pushes!r}.items()}}))
        """,
        hub["upload"].endpoint,
        tmp_path / "push-cache",
    )
    urls = last_json(push)
    assert len(urls) == len(local) and all("/commit/" in url for url in urls.values())
    cache = tmp_path / "pull-cache"
    pulled = last_json(run_python(_compare_pulled(local), hub["olah"].endpoint, cache))
    assert pulled == dict.fromkeys(local, True)
    # Pulled once, they load again with HF_HUB_OFFLINE=1 from the cache.
    offline = last_json(run_python(_compare_pulled(local), "http://127.0.0.1:9", cache, offline=True))
    assert offline == dict.fromkeys(local, True)


@pytest.fixture(scope="module")
def region_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub-data")
    fixture = write_coco_fixture(root / "src")
    source = CocoRegions(fixture["images_dir"], fixture["annotations"], categories="file")
    for split in ("train", "validation"):
        build_region_dataset(source, root / "regions", split=split, progress=False)
    return root / "regions"


@pytest.mark.slow
def test_a_pushed_model_card_parses_and_its_code_runs_against_the_hub(hub, region_dataset, tmp_path):
    classes = RegionDataset(region_dataset, "validation").class_names
    folder = saved_model(tmp_path / "model", "roi_resnet18_add_l1", seed=7, num_classes=len(classes))
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    save_model(model, folder, label_names=classes, overwrite=True)
    results = evaluate_models([str(folder)], region_dataset, split="validation", probes=True)
    (folder / RESULTS_NAME).write_text(json.dumps(results))
    write_model_card(folder)
    assert "local-dir:" in (folder / "README.md").read_text()

    repo = f"{ORG}/card-test"
    run = run_cli(["push", "--model-dir", str(folder), "--repo-id", repo], hub["upload"].endpoint, tmp_path / "c1")
    assert run.returncode == 0, run.stderr[-3000:]
    published = hub["mirrors"] / "models" / repo
    assert sorted(git(published, "ls-files").split()) == [
        "README.md",
        "accuracy_by_size.png",
        "config.json",
        "eval_results.json",
        "model.safetensors",
    ]
    card = (published / "README.md").read_text()
    assert f'timm.create_model("hf-hub:{repo}"' in card and "Mask probes" in card

    # The card's code, as printed, on a real photo and mask: pulled from the Hub, and from the local folder.
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    from skimage import data

    Image.fromarray(data.coffee()).save(tmp_path / "photo.jpg")
    mask = np.zeros(data.coffee().shape[:2], np.uint8)
    mask[100:300, 200:400] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    remote = run_python(code, hub["olah"].endpoint, tmp_path / "c2", cwd=tmp_path)
    local = run_python(code.replace(f"hf-hub:{repo}", f"local-dir:{folder}"), "http://127.0.0.1:9", tmp_path, tmp_path)
    assert remote.returncode == 0, remote.stderr[-3000:]
    assert remote.stdout == local.stdout and remote.stdout.count("(") == 3
    assert all(name in classes for name in re.findall(r"\('([^']+)'", remote.stdout))


@pytest.mark.slow
def test_a_pushed_dataset_loads_with_datasets_and_region_dataset_from_the_hub(hub, region_dataset, tmp_path):
    repo = f"{ORG}/regions-test"
    run = run_cli(["push", "--dataset-dir", str(region_dataset), "--repo-id", repo], hub["upload"].endpoint, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    pulled = last_json(
        run_python(
            f"""
            import json
            from datasets import load_dataset
            from roi_attention.data import RegionDataset
            rows = load_dataset("{repo}", "regions", split="validation")
            regions = RegionDataset("{repo}", "validation")
            masks = [int(regions.raw(i)[1].sum()) for i in range(len(regions))]
            ids, labels = list(rows["region_id"]), list(rows["label"])
            print(json.dumps(dict(ids=ids, labels=labels, classes=regions.class_names, masks=masks)))
            """,
            hub["olah"].endpoint,
            tmp_path / "cache",
        )
    )
    local = RegionDataset(region_dataset, "validation")
    assert pulled["classes"] == local.class_names
    assert pulled["ids"] == [local.regions[i]["region_id"] for i in range(len(local))]
    assert pulled["labels"] == [local.regions[i]["label"] for i in range(len(local))]
    assert pulled["masks"] == [int(local.raw(i)[1].sum()) for i in range(len(local))] and len(local) > 3
    readme = (hub["mirrors"] / "datasets" / repo / "README.md").read_text()
    assert f'load_dataset("{repo}", "regions"' in readme


def test_network_faults_give_clear_errors_and_leave_the_published_revision_intact(hub, tmp_path):
    """The default tier's Hub round trip: push, faults on the commit, pull back what was published."""
    repo = f"{ORG}/faults"
    folder = saved_model(tmp_path / "v1", "roi_resnet18_add_l3", seed=1, num_classes=4)
    upload = hub["upload"]
    assert run_cli(["push", "--model-dir", str(folder), "--repo-id", repo], upload.endpoint, tmp_path).returncode == 0
    published = hub["mirrors"] / "models" / repo
    first = git(published, "rev-parse", "HEAD")
    changed = saved_model(tmp_path / "v2", "roi_resnet18_add_l3", seed=2, num_classes=4)

    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    # A fault on the commit, then nothing listening at all.
    for fault, endpoint, expected in (
        ("500", upload.endpoint, "500"),
        ("drop", upload.endpoint, "keeps its previous revision"),
        (None, down, "nothing was sent"),
    ):
        upload.faults = [[fault, "commit", 100]]
        run = run_cli(["push", "--model-dir", str(changed), "--repo-id", repo], endpoint, tmp_path)
        assert run.returncode == 2, run.stdout + run.stderr
        assert "roi-attention: publishing" in run.stderr and expected in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
        assert git(published, "rev-parse", "HEAD") == first
    upload.faults = []
    pull = f"""
        import json, timm, torch, roi_attention
        state = timm.create_model("hf-hub:{repo}", pretrained=True).state_dict()
        print(json.dumps(float(sum(v.double().sum() for k, v in state.items() if v.is_floating_point()))))
    """
    checksum = sum(v.double().sum() for v in load_file(str(folder / "model.safetensors")).values()).item()
    assert last_json(run_python(pull, hub["olah"].endpoint, tmp_path / "cache")) == pytest.approx(checksum, abs=0)
    # A connection dropped once: huggingface_hub never retries a commit (a lost answer would commit twice), so
    # the push fails as above; the same command again lands the new weights, as exactly one commit.
    upload.faults = [["drop", "commit", 1]]
    push = ["push", "--model-dir", str(changed), "--repo-id", repo]
    assert run_cli(push, upload.endpoint, tmp_path).returncode == 2 and git(published, "rev-parse", "HEAD") == first
    assert run_cli(push, upload.endpoint, tmp_path).returncode == 0
    assert upload.faults[0][2] == 0 and git(published, "rev-parse", "HEAD~1") == first
    assert published_bytes(published, "model.safetensors") == (changed / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_broken_repositories_on_the_hub_give_errors_that_say_what_is_wrong(hub, tmp_path):
    good = saved_model(tmp_path / "good", "roi_resnet18_add_l1", seed=3, num_classes=2)
    config = json.loads((good / "config.json").read_text())
    weights = (good / "model.safetensors").read_bytes()
    l3 = saved_model(tmp_path / "l3", "roi_resnet18_add_l3", seed=3, num_classes=2)
    broken = {
        "unregistered": {"config.json": json.dumps(dict(config, architecture="roi_resnet18_add_l9")).encode()},
        "mismatched": {"config.json": json.dumps(config).encode()},
        "truncated": {"config.json": json.dumps(config).encode(), "model.safetensors": weights[: len(weights) // 2]},
    }
    broken["unregistered"]["model.safetensors"] = weights
    broken["mismatched"]["model.safetensors"] = (l3 / "model.safetensors").read_bytes()
    for name, files in broken.items():
        repo = hub["mirrors"] / "models" / ORG / name
        repo.mkdir(parents=True)
        git(repo, "init", "-q", "-b", "main")
        commit_files(repo, files, f"a {name} model")
    run = run_python(
        f"""
        import json, timm
        from roi_attention.hub import load_model
        out = {{}}
        for name in {list(broken)!r}:
            for how, load in (("load_model", load_model), ("timm", lambda s: timm.create_model(s, pretrained=True))):
                try:
                    load("hf-hub:{ORG}/" + name)
                    out[name + " " + how] = "loaded"
                except Exception as error:
                    out[name + " " + how] = f"{{type(error).__name__}}: {{error}}"
        print(json.dumps(out))
        """,
        hub["olah"].endpoint,
        tmp_path / "cache",
    )
    errors = last_json(run)
    assert "names architecture 'roi_resnet18_add_l9', which is not registered" in errors["unregistered load_model"]
    assert "roi_resnet18_add_l9" in errors["unregistered timm"]
    for how in ("load_model", "timm"):
        assert "do not fit resnet18 with variant add_l1" in errors[f"mismatched {how}"]
        assert "unexpected" in errors[f"mismatched {how}"] and "roi_branch.layer3" in errors[f"mismatched {how}"]
        assert "truncated or not a safetensors file" in errors[f"truncated {how}"]


def test_publish_refuses_a_folder_that_would_not_load_before_sending_anything(tmp_path):
    folder = saved_model(tmp_path / "m", "roi_resnet18_mul_l3", seed=0, num_classes=2)
    assert check_model_folder(folder)["architecture"] == "roi_resnet18_mul_l3"
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="truncated or not a safetensors file"):
        publish(folder, f"{ORG}/never")
    weights.write_bytes(data)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, architecture="resnet18")))
    with pytest.raises(ValueError, match="not a registered ROI model"):
        publish(folder, f"{ORG}/never")
    (folder / "config.json").write_text(json.dumps(dict(config, architecture="roi_resnet18_mul_l1")))
    with pytest.raises(ValueError, match=r"does not fit roi_resnet18_mul_l1 as configured: .*missing"):
        publish(folder, f"{ORG}/never")
    with pytest.raises(ValueError, match="repo_id must be ORG/NAME"):
        publish(folder, "no-org")


def test_the_papers_numbers_appear_only_as_a_marked_reference(tmp_path):
    from roi_attention.labels import COCO_CLASSES
    from roi_attention.metrics import region_accuracy
    from roi_attention.metrics.paper_tables import paper_reference

    folder = saved_model(tmp_path / "m", "roi_resnet50_mul_l3", seed=0, num_classes=80)
    save_model(timm.create_model(f"local-dir:{folder}", pretrained=True), folder, list(COCO_CLASSES), overwrite=True)
    rng = np.random.default_rng(0)
    references = rng.integers(0, 80, 500)
    predictions = np.where(rng.random(500) < 0.6, references, rng.integers(0, 80, 500))
    metrics = region_accuracy(predictions, references, rng.integers(10, 300_000, 500), class_names=list(COCO_CLASSES))
    results = dict(dataset="coco-regions", split="validation", models={"m": dict(metrics=metrics, probes={})})
    (folder / RESULTS_NAME).write_text(json.dumps(results))
    card = ModelCard.load(write_model_card(folder))

    measured = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert measured["Pooled accuracy"] == metrics["pooled_accuracy"]
    table, paper = paper_reference("coco", "pooled_accuracy", "mul_l3")
    assert table == 3 and paper["all"] not in measured.values()
    reference = card.text.split("### The paper's numbers (reference only, not these weights)")[1]
    assert "Pooled accuracy: paper, ResNet50, Table 3 (reference)" in reference
    row = next(line for line in reference.splitlines() if line.startswith("| all sizes |"))
    assert f"{100 * paper['all']:.0f}%" in row and f"{100 * metrics['pooled_accuracy']:.1f}%" in row
    assert card.text.index("## Evaluation") < card.text.index("### The paper's numbers")


@pytest.mark.slow
def test_training_publishes_its_model_with_push_to_hub(hub, region_dataset, tmp_path):
    repo = f"{ORG}/trained"
    train = Path(__file__).resolve().parents[1] / "train" / "train.py"
    args = dict(dataset=region_dataset, output_dir=tmp_path / "run", model="roi_resnet18_add_l1", pretrained="false")
    args.update(max_steps=2, batch_size=2, image_size=64, num_workers=0, eval_every=2, tracker="none")
    command = [sys.executable, str(train), *[x for k, v in args.items() for x in (f"--{k}", str(v))]]
    command += ["--push-to-hub", repo]
    run = subprocess.run(command, capture_output=True, text=True, env=hub_env(hub["upload"].endpoint, tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    published = hub["mirrors"] / "models" / repo
    assert "eval_results.json" in git(published, "ls-files").split()
    local = tmp_path / "run" / "model"
    assert published_bytes(published, "model.safetensors") == (local / "model.safetensors").read_bytes()
    assert f'timm.create_model("hf-hub:{repo}"' in (published / "README.md").read_text()


# -- the Hub at real size: a ResNet50 (about 100 MB) through Git LFS -------------------------------------------

MEASURED_PUSH = """
import json, sys, time
import roi_attention.cli  # imported before the measurement starts


def status(field):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) / 1024 for line in handle if line.startswith(field + ":"))


with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # the peak resident memory starts again from here
before, start = status("VmRSS"), time.perf_counter()
code = roi_attention.cli.main(sys.argv[1:])
print(json.dumps(dict(code=code, seconds=time.perf_counter() - start, before_mb=before, peak_mb=status("VmHWM"))))
"""


def measured_push(folder: Path, repo: str, endpoint: str, cache: Path):
    command = [sys.executable, "-c", MEASURED_PUSH, "push", "--model-dir", str(folder), "--repo-id", repo]
    return subprocess.run(command, capture_output=True, text=True, env=hub_env(endpoint, cache), timeout=600)


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """A roi_resnet50_add_l1 folder, about 100 MB of weights, every weight random."""
    return saved_model(tmp_path_factory.mktemp("big") / "model", "roi_resnet50_add_l1", seed=11, num_classes=80)


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.slow
def test_a_real_size_model_goes_through_lfs_both_ways(hub, big_model, tmp_path):
    upload, repo = hub["upload"], f"{ORG}/roi_resnet50_add_l1.coco"  # the registry tag's repository
    weights = big_model / "model.safetensors"
    size, oid = weights.stat().st_size, _sha256(weights)
    assert size > 90e6
    upload.requests.clear()
    run = measured_push(big_model, repo, upload.endpoint, tmp_path / "push")
    pushed = last_json(run)
    assert pushed["code"] == 0, run.stderr[-3000:]
    # The LFS path, multipart: the batch call, one PUT per 32 MB part, the completion, the verification.
    calls = [r.split("?")[0] for r in upload.requests]
    assert f"POST /{repo}.git/info/lfs/objects/batch" in calls
    assert sum(c.startswith(f"PUT /lfs/part/models/{repo}/{oid}/") for c in calls) == -(-size // (32 << 20))
    assert f"POST /lfs/complete/models/{repo}/{oid}" in calls and f"POST /lfs/verify/models/{repo}/{oid}" in calls
    published = hub["mirrors"] / "models" / repo
    pointer = git(published, "show", "HEAD:model.safetensors")
    assert pointer == f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}"
    assert _sha256(lfs_object_path(published, oid)) == oid
    # The pushing process never held the file: the weights stream from disk, one 32 MB part at a time. Against the
    # push of a small model (same imports, the same check of the folder), the big one's peak grows by less than
    # half its extra size; holding it once would add all of it.
    small = saved_model(tmp_path / "small", "roi_regnetx_002_add_l1", seed=12, num_classes=80)
    small_size = (small / "model.safetensors").stat().st_size
    baseline = last_json(measured_push(small, f"{ORG}/small-push", upload.endpoint, tmp_path / "push-small"))
    assert baseline["code"] == 0
    added_mb = pushed["peak_mb"] - pushed["before_mb"]
    baseline_mb = baseline["peak_mb"] - baseline["before_mb"]
    print(f"push of {size / 1e6:.0f} MB: {pushed['seconds']:.1f} s, peak memory +{added_mb:.0f} MB; "
          f"of {small_size / 1e6:.0f} MB: +{baseline_mb:.0f} MB")  # fmt: skip
    assert added_mb - baseline_mb < 0.5 * (size - small_size) / 2**20, (pushed, baseline)

    # Pulled by hf-hub id and by the registry tag, bit for bit; then again offline from the cache.
    specs = {f"hf-hub:{repo}": big_model, "roi_resnet50_add_l1.coco": big_model}
    start = time.perf_counter()
    pulled = last_json(run_python(_compare_pulled(specs), hub["olah"].endpoint, tmp_path / "pull"))
    print(f"pull and load of both: {time.perf_counter() - start:.1f} s")
    assert pulled == dict.fromkeys(specs, True)
    offline = last_json(run_python(_compare_pulled(specs), "http://127.0.0.1:9", tmp_path / "pull", offline=True))
    assert offline == dict.fromkeys(specs, True)


@pytest.mark.slow
def test_faults_in_big_transfers_say_what_happened_and_publish_nothing_half(hub, big_model, tmp_path):
    upload, repo = hub["upload"], f"{ORG}/big-faults"
    small = saved_model(tmp_path / "small", "roi_resnet18_add_l3", seed=5, num_classes=80)
    assert run_cli(["push", "--model-dir", str(small), "--repo-id", repo], upload.endpoint, tmp_path).returncode == 0
    published = hub["mirrors"] / "models" / repo
    first, oid = git(published, "rev-parse", "HEAD"), _sha256(big_model / "model.safetensors")
    push = ["push", "--model-dir", str(big_model), "--repo-id", repo]
    # Every upload of a part dropped halfway (after huggingface_hub's retries), and the batch call answering 500.
    for fault in (["drop", "upload", 100], ["500", "batch", 100]):
        upload.faults = [fault]
        run = run_cli(push, upload.endpoint, tmp_path)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
        # One line from us; huggingface_hub's own retry warnings and progress bars come before it.
        message = [line for line in run.stderr.splitlines() if line.startswith("roi-attention:")]
        assert len(message) == 1 and "keeps its previous revision" in message[0], run.stderr
        assert git(published, "rev-parse", "HEAD") == first
        assert not lfs_object_path(published, oid).exists()  # no object, not even a part of one
        assert not any((published / ".git" / "lfs" / "incomplete").glob(f"{oid}.*.*"))
    assert "500" in message[0]
    # One dropped part is retried by huggingface_hub: the model lands as one commit.
    upload.faults = [["drop", "upload", 1]]
    assert run_cli(push, upload.endpoint, tmp_path).returncode == 0
    assert upload.faults[0][2] == 0 and git(published, "rev-parse", "HEAD~1") == first
    assert _sha256(lfs_object_path(published, oid)) == oid

    # A pull interrupted halfway through the weights: once (huggingface_hub retries on its own), then on every
    # attempt (a clear error), then a repeated pull completes with the right bytes.
    pull, spec = hub["pull"], {f"hf-hub:{repo}": big_model}
    pull.pattern, pull.drops = "model.safetensors", 1
    assert last_json(run_python(_compare_pulled(spec), pull.endpoint, tmp_path / "once")) == {f"hf-hub:{repo}": True}
    gets = [r for r in pull.requests if r.startswith("GET") and "model.safetensors" in r]
    half = (big_model / "model.safetensors").stat().st_size // 2
    # The broken transfer, then another: resumed from what had been written (whole chunks, up to the break), or,
    # with huggingface_hub releases that retry the whole download, from the start.
    assert len(gets) >= 2 and pull.drops == 0, gets
    assert all(0 < int(get.split("bytes=")[1].rstrip("-")) <= half for get in gets[1:] if "bytes=" in get), gets
    pull.drops = 100
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "photo.png")
    Image.fromarray(np.full((48, 64), 255, np.uint8)).save(tmp_path / "mask.png")
    predict = ["predict", "--model", f"hf-hub:{repo}", "--image", str(tmp_path / "photo.png")]
    failed = run_cli([*predict, "--mask", str(tmp_path / "mask.png")], pull.endpoint, tmp_path / "every")
    pull.drops = 0
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    message = [line for line in failed.stderr.splitlines() if line.startswith("roi-attention:")]
    assert len(message) == 1 and f"weights of 'hf-hub:{repo}' from the Hub" in message[0], failed.stderr
    assert "run the same command again" in failed.stderr.splitlines()[-1], failed.stderr
    pull.requests.clear()
    again = run_python(_compare_pulled(spec), pull.endpoint, tmp_path / "every")
    assert last_json(again) == {f"hf-hub:{repo}": True}


@pytest.mark.slow
def test_with_hf_xet_installed_huggingface_hub_uploads_through_xet_and_a_git_lfs_hub_gets_a_clear_error(hub, tmp_path):
    pytest.importorskip("hf_xet", reason="hf_xet is not installed: huggingface_hub takes the Git LFS path")
    upload, repo = hub["upload"], f"{ORG}/xet-path"
    folder = saved_model(tmp_path / "model", "roi_tf_efficientnet_lite0_add_l1", seed=3, num_classes=3)  # 18 MB
    upload.requests.clear()
    env = {**hub_env(upload.endpoint, tmp_path / "cache"), "HF_HUB_DISABLE_XET": "0"}
    command = [sys.executable, "-m", "roi_attention.cli", "push", "--model-dir", str(folder), "--repo-id", repo]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    # huggingface_hub asked for a Xet write token (its path whenever hf_xet is installed), never the LFS batch.
    assert any("/xet-write-token/" in request for request in upload.requests), upload.requests
    assert not any("/info/lfs/objects/batch" in request for request in upload.requests)
    message = [line for line in run.stderr.splitlines() if line.startswith("roi-attention:")]
    assert run.returncode == 2 and len(message) == 1 and "HF_HUB_DISABLE_XET=1" in message[0], run.stderr
    assert not (hub["mirrors"] / "models" / repo / ".git" / "refs" / "heads" / "main").exists()
    # The path this server offers, Git LFS, is what every other test here takes (hub_env disables Xet).
    assert run_cli(["push", "--model-dir", str(folder), "--repo-id", repo], upload.endpoint, tmp_path).returncode == 0


@pytest.mark.slow
def test_timms_own_push_to_hf_hub_publishes_an_roi_model_that_hf_hub_loading_rebuilds(hub, tmp_path):
    upload, repo = hub["upload"], f"{ORG}/timm-pushed"
    model = timm.create_model("roi_resnet18_mul_all", num_classes=3)
    folder = save_model(model, tmp_path / "model", label_names=["cat", "dog", "cup"])
    push = run_python(
        f"""
        import json, timm
        from roi_attention.hub import load_model
        model = load_model({str(folder)!r})  # its config carries the label names
        timm.models.push_to_hf_hub(model, {repo!r}, safe_serialization=True)
        print(json.dumps(True))
        """,
        upload.endpoint,
        tmp_path / "push",
    )
    assert last_json(push) is True
    published = hub["mirrors"] / "models" / repo
    assert sorted(git(published, "ls-tree", "--name-only", "HEAD").split()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    config = json.loads(git(published, "show", "HEAD:config.json"))
    assert config["architecture"] == "roi_resnet18_mul_all" and config["model_args"]["num_classes"] == 3
    assert config["pretrained_cfg"]["label_names"] == ["cat", "dog", "cup"]
    spec = {f"hf-hub:{repo}": folder}
    assert last_json(run_python(_compare_pulled(spec), hub["olah"].endpoint, tmp_path / "pull")) == {
        f"hf-hub:{repo}": True
    }
