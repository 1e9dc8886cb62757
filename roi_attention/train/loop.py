"""The fine-tuning loop: ``python -m roi_attention.train`` / ``accelerate launch -m roi_attention.train``.

    accelerate launch -m roi_attention.train --config train/configs/coco_roi_resnet50_add_l1.yaml [--key value ...]
    roi-attention train --config ... [--key value ...]

Command-line keys override the YAML (``TrainConfig``). Leaves ``output_dir/model`` (a folder
``timm.create_model("local-dir:...")`` loads), checkpoints to ``--resume latest`` from, and the resolved config.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import RegionDataset, eval_transform, region_collate, train_transform
from ..evaluation import predict_loader
from ..hub import HubPublishError, publish, save_model
from ..metrics import region_accuracy
from ..models import PretrainedWeightsError, classifier_names
from .checkpoints import TrainingProgress, resolve_resume, save_checkpoint
from .config import RUN_OUTPUTS, ConfigError, TrainConfig, check_config, config_help, load_config, save_config
from .data import DrawSampler, SeededRegions

SIDE_BRANCH = "roi_branch"


@dataclass
class StepState:
    """What a step callback sees after each optimizer step (``train(cfg, on_step=...)``)."""

    step: int
    loss: float
    region_ids: list[int]
    model: torch.nn.Module
    accelerator: Accelerator


def build_model(cfg: TrainConfig, class_names: list[str]) -> torch.nn.Module:
    """The ROI model of ``cfg`` with a head for ``class_names``, loaded, frozen and laid out as configured."""
    if not timm.is_model(cfg.model.split(".")[0]) or not cfg.model.startswith("roi_"):
        raise ConfigError(f"unknown model {cfg.model!r}: `roi-attention models` lists the ROI models")
    if cfg.num_classes is not None and cfg.num_classes != len(class_names):
        raise ConfigError(f"num_classes is {cfg.num_classes}, the dataset has {len(class_names)} classes")
    overlay = dict(file=cfg.weights) if cfg.weights else None
    try:
        model = timm.create_model(
            cfg.model,
            pretrained=cfg.pretrained,
            num_classes=len(class_names),
            pretrained_cfg_overlay=overlay,
            **cfg.model_kwargs,
        )
    except PretrainedWeightsError as error:
        raise ConfigError(str(error)) from error
    except (TypeError, ValueError) as error:
        if not cfg.model_kwargs:
            raise
        raise ConfigError(f"{cfg.model} does not take model_kwargs {cfg.model_kwargs}: {error}") from error
    weights_classes = model.pretrained_cfg.get("num_classes")
    model.pretrained_cfg["label_names"] = list(class_names)
    heads = classifier_names(model.pretrained_cfg)
    if cfg.zero_init_head and (not cfg.pretrained or weights_classes != len(class_names)):
        for head in heads:
            classifier = model.get_submodule(head)
            torch.nn.init.zeros_(classifier.weight)
            torch.nn.init.zeros_(classifier.bias)
    if cfg.freeze_backbone:
        heads = tuple(f"{head}." for head in heads)
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith((*heads, f"{SIDE_BRANCH}."))
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def param_groups(model: torch.nn.Module, weight_decay: float, side_branch_lr_scale: float) -> list[dict[str, Any]]:
    """timm's weight-decay groups (no decay on biases, norms and the model's ``no_weight_decay()``), made for the
    backbone and the side branch apart, the side branch's with its learning-rate scale (``lr_scale``)."""
    skip = set(getattr(model, "no_weight_decay", lambda: ())())
    groups = []
    for name, child in model.named_children():
        inner = {key[len(name) + 1 :] for key in skip if key.startswith(f"{name}.")}
        scale = side_branch_lr_scale if name == SIDE_BRANCH else 1.0
        for group in param_groups_weight_decay(child, weight_decay, no_weight_decay_list=inner):
            if group["params"]:
                groups.append(dict(group, lr_scale=scale))
    return groups


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer ``cfg.optimizer`` over ``param_groups``."""
    groups = param_groups(model, cfg.weight_decay, cfg.side_branch_lr_scale)
    return create_optimizer_v2(groups, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> Any:
    """timm's scheduler: ``warmup_steps`` of linear warmup, then ``cfg.schedule`` (constant, or cosine to zero at
    ``max_steps``), stepped per optimizer update with ``step_update(step)``."""
    warmup = min(cfg.warmup_steps, cfg.max_steps - 1)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.schedule,
        num_epochs=cfg.max_steps - warmup,
        warmup_epochs=warmup,
        warmup_lr=cfg.lr / max(1, warmup),
        warmup_prefix=True,
        min_lr=0.0,
        step_on_epochs=False,
        updates_per_epoch=1,
    )
    return scheduler


def set_train_mode(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Train mode; batch-norm statistics stay frozen with freeze_bn or freeze_backbone."""
    model.train()
    if cfg.freeze_bn or cfg.freeze_backbone:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def evaluate(model, eval_set, cfg: TrainConfig, accelerator: Accelerator) -> dict:
    model.eval()
    eval_set.limit(cfg.eval_limit)
    loader = DataLoader(eval_set, batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=region_collate)
    out = predict_loader(model, accelerator.prepare_data_loader(loader), accelerator, "evaluating")
    set_train_mode(model, cfg)
    return region_accuracy(
        out["top"][:, 0], out["label"], out["area"], top5=out["top"], class_names=eval_set.class_names
    )


def _asked_for_fsdp() -> bool:
    """Whether ``accelerate launch`` was given an FSDP config (it says so to the processes in the environment)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def train(cfg: TrainConfig, on_step: Callable[[StepState], None] | None = None) -> int:
    """Fine-tune as ``cfg`` says; 0 when the model is saved (and published), 1 when publishing failed, 2 when the
    configuration cannot run. ``on_step`` is called after every optimizer step, on every process."""
    check_config(cfg)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=None if cfg.tracker == "none" else cfg.tracker,
        project_dir=cfg.output_dir,
    )
    set_seed(cfg.seed, deterministic=cfg.deterministic)
    if cfg.overwrite and accelerator.is_main_process:  # what an earlier run left, checked by check_config
        for name in RUN_OUTPUTS:
            shutil.rmtree(Path(cfg.output_dir) / name, ignore_errors=True)
    accelerator.wait_for_everyone()

    # Everything that can be wrong is checked here, before the first step.
    try:
        if _asked_for_fsdp() and accelerator.distributed_type != DistributedType.FSDP:
            raise ConfigError(
                f"the accelerate config asks for FSDP, but accelerate runs these processes as "
                f"{accelerator.distributed_type.value} (FSDP needs GPUs; on CPUs use train/accelerate/ddp.yaml)"
            )
        train_set = RegionDataset(cfg.dataset, cfg.train_split)
        eval_set = RegionDataset(cfg.dataset, cfg.eval_split) if cfg.eval_split else None
        model = build_model(cfg, train_set.class_names)
        resume_from = resolve_resume(cfg.output_dir, cfg.resume)
    except (ConfigError, ValueError, FileNotFoundError, OSError) as error:
        accelerator.end_training()  # a process exiting with its process group alive aborts
        raise ConfigError(str(error)) from error
    data_config = timm.data.resolve_data_config({}, model=model)
    if cfg.image_size:
        data_config["input_size"] = (data_config["input_size"][0], cfg.image_size, cfg.image_size)
        # The saved model says what size it was trained at, so that eval and predict resize photos to it.
        model.pretrained_cfg["input_size"] = data_config["input_size"]
    train_set.transform = train_transform(data_config)
    if eval_set is not None:
        eval_set.transform = eval_transform(data_config)

    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    progress = TrainingProgress()
    if cfg.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(progress)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        accelerator.print(f"resumed from {resume_from} at step {progress.step}")
    if accelerator.is_main_process:
        save_config(cfg, Path(cfg.output_dir) / "train_config.yaml")
    if cfg.tracker != "none":
        hparams = {k: _hparam(v) for k, v in cfg.to_dict().items()}
        accelerator.init_trackers("roi-attention", config={k: v for k, v in hparams.items() if v is not None})

    # Each rank reads its own share of one global sequence of draws; a draw's augmentation depends on it alone.
    draws_per_step = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
    sampler = DrawSampler(
        train_set,
        cfg.balanced_sampling,
        cfg.seed,
        accelerator.process_index,
        accelerator.num_processes,
        start_draw=progress.step * draws_per_step,
    )
    loader = DataLoader(
        SeededRegions(train_set, cfg.seed),
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=region_collate,
    )
    batches = iter(loader)

    set_train_mode(model, cfg)
    bar = tqdm(total=cfg.max_steps, initial=progress.step, desc="training", disable=not accelerator.is_main_process)
    started, samples = time.perf_counter(), 0
    results = None
    while progress.step < cfg.max_steps:
        scheduler.step_update(progress.step)  # the rate is a function of the step alone: a resume needs no state
        region_ids, losses = [], []
        for _ in range(cfg.grad_accum):
            batch = next(batches)
            pixels = batch["pixel_values"].to(accelerator.device)
            if cfg.channels_last:
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            with accelerator.accumulate(model):
                logits = model(pixels)
                loss = F.cross_entropy(
                    logits, batch["label"].to(accelerator.device), label_smoothing=cfg.label_smoothing
                )
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            losses.append(loss.detach())
            region_ids += batch["region_id"].tolist()
        progress.step += 1
        samples += draws_per_step
        bar.update(1)

        mean_loss = None
        if progress.step % cfg.log_every == 0 or progress.step == cfg.max_steps:
            mean_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
            rate = samples / (time.perf_counter() - started)
            lr = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}")
            accelerator.log({"train/loss": mean_loss, "train/lr": lr, "train/samples_per_s": rate}, step=progress.step)
        if eval_set is not None and (progress.step % cfg.eval_every == 0 or progress.step == cfg.max_steps):
            metrics = evaluate(model, eval_set, cfg, accelerator)
            results = dict(
                dataset=cfg.dataset, split=cfg.eval_split, models={cfg.model: dict(metrics=metrics, probes={})}
            )
            accelerator.log(
                {
                    "eval/mean_class_accuracy": metrics["mean_class_accuracy"],
                    "eval/pooled_accuracy": metrics["pooled_accuracy"],
                },
                step=progress.step,
            )
        if progress.step in cfg.snapshot_steps:
            snapshot = accelerator.get_state_dict(model)
            if accelerator.is_main_process:
                folder = Path(cfg.output_dir) / "snapshots" / f"step_{progress.step}"
                save_model(_unwrapped(accelerator, model), folder, overwrite=True, state_dict=snapshot)
        if progress.step % cfg.save_every == 0 and progress.step < cfg.max_steps:
            save_checkpoint(accelerator, cfg.output_dir, progress.step, cfg.keep_checkpoints)
        if on_step is not None:
            loss_value = mean_loss if mean_loss is not None else torch.stack(losses).mean().item()
            on_step(StepState(progress.step, loss_value, region_ids, model, accelerator))
    bar.close()

    accelerator.wait_for_everyone()
    weights = accelerator.get_state_dict(model)  # on every process: FSDP gathers the shards
    status = 0
    if accelerator.is_main_process:
        status = _save(accelerator, model, weights, cfg, results)
    accelerator.end_training()
    return status


def _unwrapped(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    unwrapped = accelerator.unwrap_model(model)
    return getattr(unwrapped, "_orig_mod", unwrapped)


def _save(
    accelerator: Accelerator, model: torch.nn.Module, weights: dict, cfg: TrainConfig, results: dict | None
) -> int:
    unwrapped = _unwrapped(accelerator, model)
    extra = {"train_config.yaml": (Path(cfg.output_dir) / "train_config.yaml").read_text()}
    if results is not None:
        extra["eval_results.json"] = json.dumps(results, indent=2)
    folder = Path(cfg.output_dir) / "model"
    try:
        save_model(unwrapped, folder, overwrite=True, extra_files=extra, card=True, state_dict=weights)
    except Exception as error:  # the weights matter more than their card
        save_model(unwrapped, folder, overwrite=True, extra_files=extra, state_dict=weights)
        accelerator.print(f"the model card could not be rendered ({error}); `roi-attention card` retries")
    accelerator.print(f"model: {folder} (timm.create_model('local-dir:{folder}', pretrained=True))")
    if cfg.push_to_hub:
        try:
            url = publish(folder, cfg.push_to_hub)
        except (HubPublishError, ValueError) as error:
            accelerator.print(f"training: the model is saved in {folder} but was not published: {error}")
            return 1
        accelerator.print(f"published to the Hub: {url}")
    return 0


def _hparam(value: Any) -> Any:
    """A config value as trackers take it (numbers, strings, booleans): lists and mappings as on the command line."""
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{key}={item}" for key, item in value.items())
    return value


def main(argv: Sequence[str] | None = None, on_step: Callable[[StepState], None] | None = None) -> int:
    """``--config FILE`` and ``--key value`` overrides, then ``train``; exit code 2 on a configuration error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(config_help())
        return 0
    try:
        config_path = None
        if "--config" in argv:
            index = argv.index("--config")
            if index + 1 == len(argv):
                raise ConfigError("--config needs a YAML file")
            config_path = argv.pop(index + 1)
            argv.pop(index)
        return train(load_config(config_path, argv), on_step=on_step)
    except ConfigError as error:
        print(f"roi_attention.train: {error}", file=sys.stderr)
        return 2


def run_training(overrides: dict[str, Any], quiet: bool = False) -> Path:
    """``python -m roi_attention.train`` with ``--key value`` overrides in a fresh process, as from a shell;
    returns ``output_dir/model``. Raises ``RuntimeError`` with the end of its error output when it fails."""
    command = [sys.executable, "-m", "roi_attention.train"]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    done = subprocess.run(command, env=env, capture_output=quiet, text=True)
    if done.returncode != 0:
        detail = (done.stderr or "")[-2000:] if quiet else "(its output is above)"
        raise RuntimeError(f"training {overrides.get('model')} failed with exit code {done.returncode}: {detail}")
    return Path(overrides["output_dir"]) / "model"
