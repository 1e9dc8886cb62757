"""Training configuration: a YAML file, overridden by ``--key value`` on the command line, checked up front."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from timm.optim import list_optimizers

# The author's recipe (method.md) and a modern one; fields left unset in a config come from its recipe.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": dict(
        optimizer="adam",
        lr=1e-5,
        weight_decay=1e-5,
        schedule="constant",
        warmup_steps=0,
        label_smoothing=0.0,
        zero_init_head=False,
    ),
    "modern": dict(
        optimizer="adamw",
        lr=1e-4,
        weight_decay=0.05,
        schedule="cosine",
        warmup_steps=500,
        label_smoothing=0.1,
        zero_init_head=True,
    ),
}


# What a run leaves in its output_dir.
RUN_OUTPUTS = ("checkpoints", "model", "snapshots")


class ConfigError(ValueError):
    """A training configuration that cannot run; raised before the first step."""


@dataclass
class TrainConfig:
    """Everything a training run needs. ``None`` means: the recipe's value, or the dataset's/model's."""

    dataset: str = ""
    output_dir: str = ""
    model: str = "roi_resnet50_add_l1"
    # Keyword arguments of the model ("mask_resize=bilinear"), as timm's train.py --model-kwargs; saved with it.
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = True
    weights: str | None = None  # safetensors file instead of the tag's Hub weights
    num_classes: int | None = None  # checked against the dataset when given
    train_split: str = "train"
    eval_split: str | None = "validation"
    image_size: int | None = None  # training crop and eval size; the model's input size by default

    recipe: str = "paper"
    optimizer: str | None = None  # a timm optimizer name (timm.optim.list_optimizers()): adam, adamw, sgd, lamb...
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None  # constant or cosine (to zero at max_steps), after warmup_steps of linear warmup
    warmup_steps: int | None = None
    label_smoothing: float | None = None
    side_branch_lr_scale: float = 1.0  # the ROI side branch starts at zero: a larger rate lets it catch up
    # A head new to the task (the weights' class count differs) starts at zero rather than timm's init, whose
    # scale suits 1000 classes (EfficientNet's draws with 1/sqrt(fan_out): logits ~10x too large for 10 classes).
    zero_init_head: bool | None = None

    max_steps: int = 90_000
    batch_size: int = 8  # per process
    grad_accum: int = 1
    balanced_sampling: bool = True
    num_workers: int = 2
    seed: int = 0
    deterministic: bool = False

    mixed_precision: str | None = None  # no, bf16 or fp16; by default accelerate's (its launch config), else no
    grad_checkpointing: bool = False
    compile: bool = False
    channels_last: bool = False
    freeze_backbone: bool = False
    freeze_bn: bool = False

    eval_every: int = 5_000
    eval_limit: int | None = None
    save_every: int = 5_000
    # Steps (before max_steps) at which the model is also saved as output_dir/snapshots/step_N, a folder
    # timm.create_model("local-dir:...") loads: a learning curve from one run ("400,800,1600").
    snapshot_steps: tuple[int, ...] = ()
    keep_checkpoints: int = 3
    log_every: int = 10
    tracker: str = "tensorboard"
    resume: str | None = None  # "latest" or a checkpoint folder
    overwrite: bool = False  # start again in an output_dir an earlier run used (its checkpoints and model go)
    push_to_hub: str | None = None

    def resolved(self) -> TrainConfig:
        """A copy with the recipe's values filled in."""
        if self.recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {self.recipe!r}, expected one of {tuple(RECIPES)}")
        values = {k: v for k, v in RECIPES[self.recipe].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **values)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _parse_value(name: str, text: str, kind: Any) -> Any:
    if typing.get_origin(kind) is tuple:  # a comma-separated list: 400,800,1600
        item = typing.get_args(kind)[0]
        return tuple(_parse_value(name, part.strip(), item) for part in text.split(",") if part.strip())
    if typing.get_origin(kind) is dict:  # comma-separated key=value pairs, each value read as YAML
        pairs = [part.strip() for part in text.split(",") if part.strip()]
        if any("=" not in pair for pair in pairs):
            raise ConfigError(f"--{name} expects key=value pairs separated by commas, got {text!r}")
        return {key.strip(): yaml.safe_load(value) for key, value in (pair.split("=", 1) for pair in pairs)}
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)
    base = next((t for t in typing.get_args(kind) if t is not type(None)), kind) if optional else kind
    if optional and text.lower() in ("none", "null"):
        return None
    try:
        if base is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return base(text)
    except ValueError as error:
        raise ConfigError(f"--{name} expects {getattr(base, '__name__', base)}, got {text!r}") from error


def config_help() -> str:
    """``--help`` of the training command: its usage and every config key with its type and default."""
    lines = [
        "usage: python -m roi_attention.train [--config FILE] [--KEY VALUE ...]   (or: roi-attention train ...)",
        "",
        "Every key of TrainConfig, from a YAML --config file and/or the command line (keys take - or _); unset",
        f"optimizer keys come from the recipe ({', '.join(RECIPES)}). train/README.md says what each does.",
        "",
    ]
    types_ = _field_types()
    for item in dataclasses.fields(TrainConfig):
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        hint = types_[item.name]
        kind = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        lines.append(f"  --{item.name:22} {kind:20} default: {default!r}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """The config in YAML ``path`` with ``--key value`` ``overrides`` applied, recipe resolved."""
    types_ = _field_types()
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys")
        values.update(loaded)
    overrides = list(overrides or [])
    while overrides:
        key = overrides.pop(0)
        if not key.startswith("--"):
            raise ConfigError(f"expected --key value, got {key!r}")
        name = key[2:].replace("-", "_")
        if "=" in name:
            name, text = name.split("=", 1)
        elif overrides and not overrides[0].startswith("--"):
            text = overrides.pop(0)
        else:
            raise ConfigError(f"--{name} needs a value")
        if name not in types_:
            raise ConfigError(f"unknown config key --{name}")
        values[name] = _parse_value(name, text, types_[name])
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
    if isinstance(values.get("snapshot_steps"), list):  # YAML gives a list
        values["snapshot_steps"] = tuple(values["snapshot_steps"])
    return TrainConfig(**values).resolved()


def check_config(cfg: TrainConfig) -> None:
    """Refuse, before any work, what cannot run (the dataset and model are checked when they load)."""
    if not cfg.dataset:
        raise ConfigError("no dataset: set dataset (a region dataset folder or Hub id)")
    if not cfg.output_dir:
        raise ConfigError("no output_dir")
    if cfg.optimizer not in list_optimizers():
        raise ConfigError(
            f"optimizer must be a timm optimizer name (timm.optim.list_optimizers()), got {cfg.optimizer!r}"
        )
    if not isinstance(cfg.model_kwargs, dict):
        raise ConfigError(f"model_kwargs must be a mapping of keyword arguments, got {cfg.model_kwargs!r}")
    reserved = sorted(set(cfg.model_kwargs) & {"pretrained", "num_classes", "pretrained_cfg_overlay"})
    if reserved:
        raise ConfigError(f"model_kwargs cannot set {reserved}: they have their own config keys (or the dataset's)")
    choices = dict(
        schedule=("constant", "cosine"),
        mixed_precision=(None, "no", "bf16", "fp16"),
        tracker=("tensorboard", "none"),
    )
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"{key} must be one of {allowed}, got {getattr(cfg, key)!r}")
    for key in ("max_steps", "batch_size", "grad_accum", "eval_every", "save_every", "keep_checkpoints", "log_every"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    wrong = [step for step in cfg.snapshot_steps if not isinstance(step, int) or not 1 <= step < cfg.max_steps]
    if wrong:
        raise ConfigError(
            f"snapshot_steps must be steps between 1 and max_steps - 1 ({cfg.max_steps - 1}), got {wrong}"
        )
    if cfg.weights is not None and not Path(cfg.weights).is_file():
        raise ConfigError(f"weights file {cfg.weights} does not exist")
    output = Path(cfg.output_dir)
    earlier = [name for name in RUN_OUTPUTS if (output / name).exists()]
    if earlier and cfg.resume is None and not cfg.overwrite:
        raise ConfigError(
            f"output_dir {output} holds an earlier run ({', '.join(earlier)}): --resume latest to continue it, "
            "--overwrite true to start again, or choose another output_dir"
        )
    if cfg.resume is not None and cfg.overwrite:
        raise ConfigError("--resume continues the run in output_dir, --overwrite starts again: choose one")
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"output_dir {output} is not writable: {error}") from error


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
