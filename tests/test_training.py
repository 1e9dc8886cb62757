"""Training: configs, two CPU processes against one, resuming after SIGKILL, config errors, what it leaves."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import timm
import torch
from accelerate.utils import set_seed
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from roi_attention.data import CocoRegions, build_region_dataset
from roi_attention.models import VARIANTS
from roi_attention.train import DrawSampler, build_optimizer, build_scheduler, load_config
from roi_attention.train.config import ConfigError

from .conftest import SESSION_SCRATCH
from .data_fixtures import write_coco_fixture

ROOT = Path(__file__).resolve().parents[1]
# The package's loop with the tests' probes (per-rank logs, SIGKILL at a step) given through its step callback.
TRAIN = Path(__file__).with_name("train_probe.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(SESSION_SCRATCH / "hub")}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    fixture = write_coco_fixture(root / "src")
    source = CocoRegions(fixture["images_dir"], fixture["annotations"], categories="file")
    for split in ("train", "validation"):
        build_region_dataset(source, root / "regions", split=split, progress=False)
    return root / "regions"


def _args(dataset, out, **overrides):
    values = dict(
        dataset=dataset,
        output_dir=out,
        model="roi_resnet18_add_l1",
        pretrained="false",
        max_steps=4,
        batch_size=2,
        image_size=64,
        num_workers=0,
        eval_every=100,
        save_every=100,
        log_every=1,
        tracker="none",
        seed=3,
    )
    values.update(overrides)
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def _train(dataset, out, launcher=None, **overrides):
    command = [*(launcher or [sys.executable]), str(TRAIN), *_args(dataset, out, **overrides)]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT)


def _accelerate(processes):
    """`accelerate launch` for N processes: the repository's DDP config (train/accelerate/ddp.yaml); on a machine
    without GPUs the loop asks for the CPU and the processes run as MULTI_CPU with gloo."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    if processes > 1:
        options = ["--config_file", str(ROOT / "train" / "accelerate" / "ddp.yaml")]
    else:
        options = ["--cpu", "--num_machines", "1", "--dynamo_backend", "no"]
    return [accelerate, "launch", *options, "--num_processes", str(processes), "--mixed_precision", "no"]


def _weights(out):
    return load_file(str(Path(out) / "model" / "model.safetensors"))


def test_every_paper_experiment_has_a_config_that_loads():
    for dataset in ("coco", "opensurfaces"):
        for variant in VARIANTS:
            cfg = load_config(ROOT / "train" / "configs" / f"{dataset}_roi_resnet50_{variant}.yaml")
            assert timm.is_model(cfg.model.split(".")[0]) and cfg.model.startswith(f"roi_resnet50_{variant}.")
            assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.schedule) == ("adam", 1e-5, 1e-5, "constant")
            assert cfg.balanced_sampling and cfg.batch_size == 8 and cfg.zero_init_head is False
    modern = load_config(ROOT / "train/configs/coco_roi_resnet50_add_l1.yaml", ["--recipe", "modern", "--lr", "3e-4"])
    assert (modern.optimizer, modern.schedule, modern.label_smoothing, modern.lr) == ("adamw", "cosine", 0.1, 3e-4)
    assert modern.zero_init_head is True


@pytest.mark.parametrize("recipe", ["modern", pytest.param("paper", marks=pytest.mark.slow)])
def test_a_head_new_to_the_task_starts_at_zero_with_the_modern_recipe(dataset, tmp_path, recipe):
    set_seed(0)
    source = timm.create_model("roi_resnet18_add_l1", num_classes=1000)  # like ImageNet weights: 1000 classes
    save_file(source.state_dict(), str(tmp_path / "imagenet.safetensors"))
    run = _train(
        dataset,
        tmp_path / "out",
        pretrained="true",
        weights=tmp_path / "imagenet.safetensors",
        recipe=recipe,
        lr=0.0,
        freeze_bn="true",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    trained = _weights(tmp_path / "out")
    assert trained["backbone.fc.weight"].shape == (6, 512)
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("backbone.fc.")}
    assert all(torch.equal(trained[k], v) for k, v in backbone.items())  # lr 0, statistics frozen: as loaded
    head_is_zero = not trained["backbone.fc.weight"].any() and not trained["backbone.fc.bias"].any()
    assert head_is_zero == (recipe == "modern")


@pytest.mark.slow
def test_a_snapshot_is_the_model_of_the_run_that_stopped_there(dataset, tmp_path):
    """With a constant learning rate, the snapshot at step 2 of a 4-step run is the model a 2-step run saves."""
    constant = dict(schedule="constant", warmup_steps=0, eval_split="none")
    run = _train(dataset, tmp_path / "four", max_steps=4, snapshot_steps="2", **constant)
    assert run.returncode == 0, run.stderr[-3000:]
    short = _train(dataset, tmp_path / "two", max_steps=2, **constant)
    assert short.returncode == 0, short.stderr[-3000:]
    snapshot = load_file(str(tmp_path / "four" / "snapshots" / "step_2" / "model.safetensors"))
    assert snapshot.keys() == _weights(tmp_path / "two").keys()
    assert all(torch.equal(snapshot[k], v) for k, v in _weights(tmp_path / "two").items())
    assert not all(torch.equal(snapshot[k], v) for k, v in _weights(tmp_path / "four").items())
    assert timm.create_model(f"local-dir:{tmp_path / 'four' / 'snapshots' / 'step_2'}", pretrained=True)
    with pytest.raises(ConfigError, match="snapshot_steps must be steps between 1 and max_steps - 1"):
        from roi_attention.train.config import check_config

        check_config(load_config(None, ["--dataset", "d", "--output_dir", str(tmp_path / "x"), "--max_steps", "4",
                                        "--snapshot_steps", "2,4"]))  # fmt: skip


def test_config_overrides_are_typed_and_unknown_keys_refused():
    cfg = load_config(None, ["--max_steps", "7", "--freeze_backbone", "true", "--eval_split", "none", "--lr=0.5"])
    assert cfg.max_steps == 7 and cfg.freeze_backbone is True and cfg.eval_split is None and cfg.lr == 0.5
    with pytest.raises(ConfigError, match="unknown config key --learning_rate"):
        load_config(None, ["--learning_rate", "1"])
    with pytest.raises(ConfigError, match="--max_steps expects int"):
        load_config(None, ["--max_steps", "many"])


def test_model_kwargs_reach_the_model_and_stay_with_it(dataset, tmp_path):
    """``--model_kwargs mask_resize=bilinear`` (timm's train.py ``--model-kwargs``): the trained model resizes
    masks bilinearly, and the saved folder loads as that model; TensorBoard records them among the hparams."""
    from roi_attention.train import main as train_main

    out = tmp_path / "out"
    kwargs = "mask_resize=bilinear,crop_margin=0.2"
    assert train_main(_args(dataset, out, max_steps=2, model_kwargs=kwargs, tracker="tensorboard")) == 0
    assert list((out / "roi-attention").rglob("events.out.tfevents.*"))
    loaded = timm.create_model(f"local-dir:{out / 'model'}", pretrained=True)
    assert (loaded.mask_resize, loaded.crop_margin) == ("bilinear", 0.2)
    assert load_config(None, ["--model_kwargs", "crop_margin=0.2"]).model_kwargs == {"crop_margin": 0.2}
    # The same weights in a model built with each mode (the side branch made large enough to matter): the loaded
    # one answers as the bilinear one.
    torch.manual_seed(0)
    weights = {k: torch.randn_like(v) if k.startswith("roi_branch.") else v for k, v in _weights(out).items()}
    loaded.load_state_dict(weights)
    built = {}
    for mode in ("bilinear", "max"):
        built[mode] = timm.create_model("roi_resnet18_add_l1", num_classes=6, mask_resize=mode).eval()
        built[mode].load_state_dict(weights)
    image, mask = torch.rand(1, 3, 64, 64), torch.zeros(1, 1, 64, 64)
    mask[..., 30:33, 30:33] = 1  # smaller than the stride: the two resizes differ
    with torch.no_grad():
        answer = loaded.eval()(image, mask=mask)
        assert torch.equal(answer, built["bilinear"](image, mask=mask))
        assert not torch.allclose(answer, built["max"](image, mask=mask))


def test_the_draw_sampler_splits_one_sequence_across_ranks_and_resumes():
    class Fake:
        def __init__(self):
            self.labels, self.regions = [0, 0, 1, 1, 2], {"image_id": [1, 1, 2, 3, 4]}

    def take(sampler, n):
        iterator = iter(sampler)
        return [next(iterator) for _ in range(n)]

    one = take(DrawSampler(Fake(), True, 5, 0, 1), 12)
    ranks = [take(DrawSampler(Fake(), True, 5, r, 2), 6) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(one)
    assert [d for d, _ in ranks[1]] == [1, 3, 5, 7, 9, 11]
    assert take(DrawSampler(Fake(), True, 5, 0, 1, start_draw=4), 8) == one[4:]


@pytest.mark.slow
def test_two_cpu_processes_match_one_with_the_same_global_batch(dataset, tmp_path):
    common = dict(freeze_bn="true", probe_rank_log="true", eval_split="none", max_steps=3)
    two = _train(dataset, tmp_path / "two", launcher=[*_accelerate(2)], batch_size=2, **common)
    assert two.returncode == 0, two.stderr[-3000:]
    one = _train(dataset, tmp_path / "one", batch_size=4, **common)
    assert one.returncode == 0, one.stderr[-3000:]
    logs = [
        [json.loads(line) for line in (tmp_path / "two" / "probe" / f"rank{r}.jsonl").read_text().splitlines()]
        for r in range(2)
    ]
    single = [json.loads(line) for line in (tmp_path / "one" / "probe" / "rank0.jsonl").read_text().splitlines()]
    assert len(logs[0]) == len(logs[1]) == len(single) == 3
    for step in range(3):
        assert logs[0][step]["checksum"] == logs[1][step]["checksum"], "ranks hold different weights"
        # each rank read its own share; together they read the single process's batch
        assert Counter(logs[0][step]["region_ids"] + logs[1][step]["region_ids"]) == Counter(single[step]["region_ids"])
    for key, value in _weights(tmp_path / "one").items():
        assert torch.allclose(_weights(tmp_path / "two")[key], value, atol=1e-5, rtol=1e-4), key


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_bitwise_identical_weights(dataset, tmp_path):
    common = dict(max_steps=6, save_every=2, deterministic="true", num_workers=2, eval_split="none")
    killed = _train(dataset, tmp_path / "run", probe_kill_at_step=5, **common)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "run" / "model").exists()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    resumed = _train(dataset, tmp_path / "run", resume="latest", **common)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr and "step 4" in resumed.stdout + resumed.stderr
    straight = _train(dataset, tmp_path / "straight", **common)
    assert straight.returncode == 0, straight.stderr[-3000:]
    a, b = _weights(tmp_path / "run"), _weights(tmp_path / "straight")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_training_through_accelerate_launch_leaves_a_loadable_model_with_card_and_results(dataset, tmp_path):
    run = _train(
        dataset,
        tmp_path / "out",
        launcher=_accelerate(1),
        eval_every=2,
        save_every=2,
        keep_checkpoints=1,
        tracker="tensorboard",
        model="roi_resnet18_mul_l1",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    folder = tmp_path / "out" / "model"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "accuracy_by_size.png",
        "config.json",
        "eval_results.json",
        "model.safetensors",
        "train_config.yaml",
    ]
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert model.num_classes == 6 and model.pretrained_cfg["label_names"][0] == "person"
    # Trained at 64x64: eval and predict must resize photos to that, not to the backbone's 224.
    assert tuple(timm.data.resolve_data_config({}, model=model)["input_size"]) == (3, 64, 64)
    results = json.loads((folder / "eval_results.json").read_text())
    assert results["models"]["roi_resnet18_mul_l1"]["metrics"]["num_regions"] == 6
    metrics = results["models"]["roi_resnet18_mul_l1"]["metrics"]
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "timm" and card.data.pipeline_tag == "image-classification"
    assert card.data.license == "bsd-3-clause" and "roi-mul_l1" in card.data.tags
    # The model-index the Hub reads: every accuracy, overall and per size bin, exactly as measured.
    expected = {
        "Mean accuracy per class": metrics["mean_class_accuracy"],
        "Pooled accuracy": metrics["pooled_accuracy"],
    }
    for row in metrics["size_bins"]:
        for key, title in (("mean_class_accuracy", "Mean accuracy per class"), ("pooled_accuracy", "Pooled accuracy")):
            if row[key] is not None:
                expected[f"{title}, ROI {row['bin']} px"] = row[key]
    parsed = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert parsed == expected and len(expected) > 2
    assert {r.dataset_split for r in card.data.eval_results} == {"validation"}
    assert {r.task_type for r in card.data.eval_results} == {"image-classification"}
    # The body: where the mask merges, the recipe as trained, the plot, and no paper column for foreign classes.
    assert "| `backbone.conv1` | 64 |" in card.text and "| max_steps | 4 |" in card.text
    assert "![Accuracy by ROI size](accuracy_by_size.png)" in card.text
    assert "paper, ResNet50" not in card.text and "arXiv:1812.00291" in card.text
    assert [p.name for p in (tmp_path / "out" / "checkpoints").iterdir()] == ["step_00000002"]  # keep 1
    assert list((tmp_path / "out" / "roi-attention").rglob("events.out.tfevents.*"))  # TensorBoard


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(model="roi_resnet18_nonsense"), "unknown model 'roi_resnet18_nonsense'"),
        (dict(dataset="/nonexistent/regions"), "dataset /nonexistent/regions does not exist"),
        (dict(num_classes=80), "num_classes is 80, the dataset has 6 classes"),
        (dict(output_dir="/proc/not-writable"), "is not writable"),
        (dict(optimizer="nonsense"), "optimizer must be a timm optimizer name"),
        (dict(model="roi_resnet18_add_l1", pretrained="true"), "could not be loaded"),
        (dict(model_kwargs="mask_resize=nearest"), "does not take model_kwargs {'mask_resize': 'nearest'}"),
        (dict(model_kwargs="colour=red"), "does not take model_kwargs {'colour': 'red'}"),
        (dict(model_kwargs="num_classes=3"), "model_kwargs cannot set ['num_classes']"),
        (dict(model_kwargs="bilinear"), "--model_kwargs expects key=value pairs"),
    ],
)
def test_config_errors_fail_before_the_first_step(dataset, tmp_path, overrides, message, capsys):
    """In process: the exit code and message are main's (the command's own exit code: the test below)."""
    from roi_attention.train import main as train_main

    overrides = dict(overrides)
    argv = _args(overrides.pop("dataset", dataset), overrides.pop("output_dir", tmp_path / "out"), **overrides)
    assert train_main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "checkpoints").exists() and not (tmp_path / "out" / "model").exists()


def test_a_used_output_dir_is_refused_unless_resume_or_overwrite_says_what_to_do(dataset, tmp_path, capsys):
    from roi_attention.train import main as train_main

    out = tmp_path / "out"
    assert train_main(_args(dataset, out, max_steps=3, save_every=1, keep_checkpoints=5)) == 0
    first = _weights(out)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000001", "step_00000002"]
    assert train_main(_args(dataset, out, max_steps=2, seed=4)) == 2
    assert "holds an earlier run (checkpoints, model): --resume latest" in capsys.readouterr().err
    assert all(torch.equal(first[k], v) for k, v in _weights(out).items())  # nothing of it touched
    assert train_main(_args(dataset, out, max_steps=2, seed=4, overwrite="true", resume="latest")) == 2
    assert train_main(_args(dataset, out, max_steps=2, seed=4, save_every=1, overwrite="true")) == 0
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000001"]  # the new run's alone
    assert not all(torch.equal(first[k], v) for k, v in _weights(out).items())


def test_the_command_exits_2_with_the_reason_and_no_traceback(dataset, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "roi_attention.train", *_args(dataset, tmp_path / "out", model="roi_resnet18_nonsense")],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert run.returncode == 2 and "unknown model 'roi_resnet18_nonsense'" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.slow
def test_training_options_together_and_a_frozen_backbone_stays_frozen(dataset, tmp_path):
    run = _train(
        dataset,
        tmp_path / "out",
        max_steps=2,
        grad_accum=2,
        grad_checkpointing="true",
        channels_last="true",
        freeze_backbone="true",
        mixed_precision="bf16",
        eval_split="none",
        recipe="modern",
        lr=0.01,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    set_seed(3)  # the run's seed: the same random initialisation
    initial = timm.create_model("roi_resnet18_add_l1", num_classes=6).state_dict()
    trained = _weights(tmp_path / "out")
    changed = {key for key in trained if not torch.equal(trained[key], initial[key])}
    assert changed, "nothing trained"
    assert all(key.startswith(("backbone.fc.", "roi_branch.")) for key in changed), sorted(changed)[:5]
    assert any(key.startswith("roi_branch.") for key in changed)


def test_weight_decay_spares_biases_norms_and_the_side_branch_identity():
    """AdamW with zero gradients: only decoupled weight decay moves a weight. The multiplication side branch's bias
    (1, the identity) and every norm weight stay bitwise; the convs' weights shrink by lr x decay a step."""
    model = timm.create_model("roi_resnet18_mul_l1", num_classes=6)
    assert torch.all(model.roi_branch["conv1"].bias == 1)
    cfg = load_config(None, ["--optimizer", "adamw", "--lr", "1e-3", "--weight_decay", "10"])
    optimizer = build_optimizer(cfg, model)
    held = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(held) == sorted(id(p) for p in model.parameters()), "a parameter missing or in two groups"
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for _ in range(10):
        for parameter in model.parameters():
            parameter.grad = torch.zeros_like(parameter)
        optimizer.step()
    after = dict(model.named_parameters())
    spared = [name for name, p in before.items() if p.ndim <= 1]  # biases and norm weights
    assert "roi_branch.conv1.bias" in spared and "backbone.bn1.weight" in spared
    assert all(torch.equal(after[name], before[name]) for name in spared), "a bias or norm weight was decayed"
    conv = "backbone.layer1.0.conv1.weight"
    assert torch.allclose(after[conv], before[conv] * (1 - 1e-3 * 10) ** 10, rtol=1e-5)


def test_the_side_branch_learns_at_its_scale_through_timms_warmup_and_cosine():
    model = timm.create_model("roi_resnet18_add_l1", num_classes=6)
    overrides = ["--recipe", "modern", "--lr", "0.1", "--warmup_steps", "4", "--max_steps", "20"]
    cfg = load_config(None, [*overrides, "--side_branch_lr_scale", "10"])
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    side = {id(p) for p in model.roi_branch.parameters()}
    for step in range(20):
        scheduler.step_update(step)
        # hand-computed: linear warmup from lr/4 to lr, then half a cosine from lr to 0 over the 16 steps left
        if step < 4:
            expected = 0.1 / 4 + step * (0.1 - 0.1 / 4) / 4
        else:
            expected = 0.1 * 0.5 * (1 + math.cos(math.pi * (step - 4) / 16))
        for group in optimizer.param_groups:
            scale = 10 if id(group["params"][0]) in side else 1
            assert all((id(p) in side) == (scale == 10) for p in group["params"])
            assert group["lr"] == pytest.approx(expected * scale, rel=1e-6), (step, scale)


@pytest.mark.slow
def test_an_installed_wheel_fine_tunes_from_an_empty_folder(dataset, tmp_path):
    """The project's wheel, unpacked outside the checkout, trains with `python -m roi_attention.train` from an empty
    working directory: the loop, its card template and its defaults ship in the package."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, ROOT],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("roi_attention-*.whl")
    site = tmp_path / "site"
    shutil.unpack_archive(wheel, site, format="zip")
    assert not (site / "train").exists() and (site / "roi_attention" / "train" / "__main__.py").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()

    def python(*arguments):
        env = {**ENV, "PYTHONPATH": str(site)}
        return subprocess.run([sys.executable, *arguments], capture_output=True, text=True, env=env, cwd=empty)

    where = python("-c", "import roi_attention.train; print(roi_attention.train.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr
    run = python("-m", "roi_attention.train", *_args(dataset, "out", max_steps=2, eval_every=2))
    assert run.returncode == 0, run.stderr[-3000:]
    model = timm.create_model(f"local-dir:{empty / 'out' / 'model'}", pretrained=True)
    assert model.num_classes == 6 and (empty / "out" / "model" / "README.md").is_file()
    assert sorted(p.name for p in empty.iterdir()) == ["out"]


def test_roi_attention_train_is_the_same_loop_as_python_m(dataset, tmp_path):
    from roi_attention.cli import main as cli_main

    assert cli_main(["train", *_args(dataset, tmp_path / "out", optimizer="nonsense")]) == 2
    assert cli_main(["train", "--config"]) == 2


@pytest.mark.parametrize("command", [["train", "--help"], ["train", "--config", "x.yaml", "-h"]])
def test_train_help_lists_every_config_key_with_its_default(command, capsys):
    import dataclasses

    from roi_attention.cli import main as cli_main
    from roi_attention.train.config import TrainConfig

    assert cli_main(command) == 0
    printed = capsys.readouterr().out
    for item in dataclasses.fields(TrainConfig):
        assert re.search(rf"^  --{item.name} +\S", printed, re.M), item.name
    assert re.search(r"^  --max_steps +int +default: 90000$", printed, re.M), printed


def test_the_fsdp_config_is_accelerates_and_wraps_blocks_the_backbone_has(dataset, tmp_path):
    """What runs here: accelerate reads the file, and its wrap class names blocks of the model it is for. FSDP itself
    needs GPUs (accelerate runs CPU processes as DDP): on CPUs the loop refuses, saying so, before any step."""
    from accelerate.commands.config.config_args import ClusterConfig

    path = ROOT / "train" / "accelerate" / "fsdp.yaml"
    config = ClusterConfig.from_yaml_file(str(path))
    assert config.distributed_type == "FSDP" and config.fsdp_config["fsdp_activation_checkpointing"] is True
    wrapped = config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
    with torch.device("meta"):
        blocks = timm.create_model("roi_resnet50_add_l1").modules()
    assert wrapped in {type(module).__name__ for module in blocks}
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    launcher = [accelerate, "launch", "--config_file", str(path), "--num_processes", "2", "--mixed_precision", "no"]
    run = _train(dataset, tmp_path / "out", launcher=launcher)
    assert run.returncode != 0 and "asks for FSDP, but accelerate runs these processes as MULTI_CPU" in run.stderr
    assert not (tmp_path / "out" / "model").exists() and not (tmp_path / "out" / "checkpoints").exists()
