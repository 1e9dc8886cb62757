"""Fine-tune an ROI-attention model on a region dataset.

    accelerate launch train/train.py --config train/configs/coco_roi_resnet50_add_l1.yaml [--key value ...]
    accelerate launch --multi_gpu --num_processes 2 train/train.py --config ...   # 2 processes; on a
    # machine without GPUs the script asks for the CPU and they train with gloo (MULTI_CPU)

Command-line keys override the YAML (see ``roi_attention.training.TrainConfig``). Leaves ``output_dir/model``
(a folder ``timm.create_model("local-dir:...")`` loads), checkpoints to ``--resume latest`` from, and the
resolved config.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from roi_attention.data import RegionDataset, eval_transform, region_collate, train_transform
from roi_attention.evaluation import predict_loader
from roi_attention.hub import HubPublishError, publish, save_model
from roi_attention.metrics import region_accuracy
from roi_attention.models import PretrainedWeightsError
from roi_attention.training import (
    ConfigError,
    DrawSampler,
    SeededRegions,
    TrainConfig,
    TrainingProgress,
    check_config,
    load_config,
    resolve_resume,
    save_checkpoint,
    save_config,
)


def build_model(cfg: TrainConfig, class_names: list[str]) -> torch.nn.Module:
    if not timm.is_model(cfg.model.split(".")[0]) or not cfg.model.startswith("roi_"):
        raise ConfigError(f"unknown model {cfg.model!r}: `roi-attention models` lists the ROI models")
    if cfg.num_classes is not None and cfg.num_classes != len(class_names):
        raise ConfigError(f"num_classes is {cfg.num_classes}, the dataset has {len(class_names)} classes")
    overlay = dict(file=cfg.weights) if cfg.weights else None
    try:
        model = timm.create_model(
            cfg.model, pretrained=cfg.pretrained, num_classes=len(class_names), pretrained_cfg_overlay=overlay
        )
    except PretrainedWeightsError as error:
        raise ConfigError(str(error)) from error
    weights_classes = model.pretrained_cfg.get("num_classes")
    model.pretrained_cfg["label_names"] = list(class_names)
    if cfg.zero_init_head and (not cfg.pretrained or weights_classes != len(class_names)):
        classifier = model.get_classifier()
        torch.nn.init.zeros_(classifier.weight)
        torch.nn.init.zeros_(classifier.bias)
    if cfg.freeze_backbone:
        head = model.pretrained_cfg["classifier"] + "."
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith(head) or name.startswith("roi_branch.")
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def set_train_mode(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Train mode; batch-norm statistics stay frozen with freeze_bn or freeze_backbone."""
    model.train()
    if cfg.freeze_bn or cfg.freeze_backbone:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    groups = [
        dict(params=[p for name, p in named if not name.startswith("roi_branch.")], lr=cfg.lr),
        dict(params=[p for name, p in named if name.startswith("roi_branch.")], lr=cfg.lr * cfg.side_branch_lr_scale),
    ]
    optimizers = dict(adam=torch.optim.Adam, adamw=torch.optim.AdamW, sgd=torch.optim.SGD)
    return optimizers[cfg.optimizer]([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then constant or cosine to zero at max_steps."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def evaluate(model, eval_set, cfg, accelerator) -> dict:
    model.eval()
    eval_set.limit(cfg.eval_limit)
    loader = DataLoader(eval_set, batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=region_collate)
    out = predict_loader(model, accelerator.prepare_data_loader(loader), accelerator, "evaluating")
    set_train_mode(model, cfg)
    return region_accuracy(
        out["top"][:, 0], out["label"], out["area"], top5=out["top"], class_names=eval_set.class_names
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = argv.pop(argv.index("--config") + 1) if "--config" in argv else None
    if "--config" in argv:
        argv.remove("--config")
    try:
        cfg = load_config(config_path, argv)
        check_config(cfg)
    except ConfigError as error:
        print(f"train.py: {error}", file=sys.stderr)
        return 2

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=None if cfg.tracker == "none" else cfg.tracker,
        project_dir=cfg.output_dir,
    )
    set_seed(cfg.seed, deterministic=cfg.deterministic)

    # Everything that can be wrong is checked here, before the first step.
    try:
        train_set = RegionDataset(cfg.dataset, cfg.train_split)
        eval_set = RegionDataset(cfg.dataset, cfg.eval_split) if cfg.eval_split else None
        model = build_model(cfg, train_set.class_names)
        resume_from = resolve_resume(cfg.output_dir, cfg.resume)
    except (ConfigError, ValueError, FileNotFoundError, OSError) as error:
        print(f"train.py: {error}", file=sys.stderr)
        accelerator.end_training()  # a process exiting with its process group alive aborts
        return 2
    data_config = timm.data.resolve_data_config({}, model=model)
    if cfg.image_size:
        data_config["input_size"] = (4, cfg.image_size, cfg.image_size)
        # The saved model says what size it was trained at, so that eval and predict resize photos to it.
        model.pretrained_cfg["input_size"] = data_config["input_size"]
    train_set.transform = train_transform(data_config)
    if eval_set is not None:
        eval_set.transform = eval_transform(data_config)

    optimizer = build_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step))
    progress = TrainingProgress()
    if cfg.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler, progress)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        accelerator.print(f"resumed from {resume_from} at step {progress.step}")
    if accelerator.is_main_process:
        save_config(cfg, Path(cfg.output_dir) / "train_config.yaml")
    if cfg.tracker != "none":
        accelerator.init_trackers("roi-attention", config={k: v for k, v in cfg.to_dict().items() if v is not None})

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
    debug_log = None
    if cfg.debug_rank_log:
        (Path(cfg.output_dir) / "debug").mkdir(exist_ok=True)
        debug_log = open(Path(cfg.output_dir) / "debug" / f"rank{accelerator.process_index}.jsonl", "a")

    set_train_mode(model, cfg)
    bar = tqdm(total=cfg.max_steps, initial=progress.step, desc="training", disable=not accelerator.is_main_process)
    started, samples = time.perf_counter(), 0
    results = None
    while progress.step < cfg.max_steps:
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
        scheduler.step()
        progress.step += 1
        samples += draws_per_step
        bar.update(1)

        if progress.step % cfg.log_every == 0 or progress.step == cfg.max_steps:
            mean_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
            rate = samples / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", samples_s=f"{rate:.1f}")
            accelerator.log(
                {"train/loss": mean_loss, "train/lr": scheduler.get_last_lr()[0], "train/samples_per_s": rate},
                step=progress.step,
            )
        if debug_log is not None:
            checksum = sum(p.detach().double().sum().item() for p in accelerator.unwrap_model(model).parameters())
            debug_log.write(json.dumps(dict(step=progress.step, region_ids=region_ids, checksum=checksum)) + "\n")
            debug_log.flush()
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
        if progress.step % cfg.save_every == 0 and progress.step < cfg.max_steps:
            save_checkpoint(accelerator, cfg.output_dir, progress.step, cfg.keep_checkpoints)
        if cfg.debug_kill_at_step == progress.step:
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped = getattr(unwrapped, "_orig_mod", unwrapped)
        extra = {"train_config.yaml": (Path(cfg.output_dir) / "train_config.yaml").read_text()}
        if results is not None:
            extra["eval_results.json"] = json.dumps(results, indent=2)
        folder = Path(cfg.output_dir) / "model"
        try:
            save_model(unwrapped, folder, overwrite=True, extra_files=extra, card=True)
        except Exception as error:  # the weights matter more than their card
            save_model(unwrapped, folder, overwrite=True, extra_files=extra)
            accelerator.print(f"the model card could not be rendered ({error}); `roi-attention card` retries")
        accelerator.print(f"model: {folder} (timm.create_model('local-dir:{folder}', pretrained=True))")
        if cfg.push_to_hub:
            try:
                url = publish(folder, cfg.push_to_hub)
            except (HubPublishError, ValueError) as error:
                accelerator.print(f"train.py: the model is saved in {folder} but was not published: {error}")
                accelerator.end_training()
                return 1
            accelerator.print(f"published to the Hub: {url}")
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
