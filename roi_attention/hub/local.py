"""Saving an ROI model as a folder that ``timm.create_model("local-dir:...")`` and the Hub read."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from timm.models._hub import save_config_for_hf
from torch import nn

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_model(
    model: nn.Module,
    directory: str | os.PathLike,
    label_names: Sequence[str] | None = None,
    overwrite: bool = False,
    extra_files: dict[str, str] | None = None,
    card: bool = False,
    repo_id: str | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` to ``directory``; nothing pickled.

    The folder appears complete or not at all: it is written beside its destination, then renamed.
    ``label_names`` (one per class) go into the config; by default the model's own, if it has them.
    ``extra_files`` (name -> text: ``eval_results.json``, ``train_config.yaml``) are written beside them; with
    ``card`` the model card is rendered from them into ``README.md`` (its code loads from ``repo_id`` if given).
    ``state_dict``: the weights to write, when the model's own are sharded (``accelerator.get_state_dict``).
    """
    directory = Path(directory)
    if directory.exists() and not overwrite:
        if not directory.is_dir() or any(directory.iterdir()):
            raise FileExistsError(f"{directory} exists and is not empty; pass overwrite=True to replace it")
    label_names = label_names if label_names is not None else model.pretrained_cfg.get("label_names")
    if label_names is not None and len(label_names) != model.num_classes:
        raise ValueError(f"got {len(label_names)} label names for a model with {model.num_classes} classes")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        model_config = {"label_names": list(label_names)} if label_names is not None else None
        # timm's save_for_hf, with contiguous tensors: safetensors refuses channels-last weights.
        weights = model.state_dict() if state_dict is None else state_dict
        save_file({k: v.contiguous() for k, v in weights.items()}, str(staging / WEIGHTS_NAME))
        save_config_for_hf(model, str(staging / CONFIG_NAME), model_config=model_config)
        _check_saved(staging)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        if card:
            from .cards import write_model_card

            write_model_card(staging, repo_id=repo_id, location=directory)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _check_saved(directory: Path) -> None:
    files = sorted(p.name for p in directory.iterdir())
    if files != sorted([CONFIG_NAME, WEIGHTS_NAME]):
        raise RuntimeError(f"expected only {CONFIG_NAME} and {WEIGHTS_NAME} in the saved folder, got {files}")
    json.loads((directory / CONFIG_NAME).read_text())
