"""Publishing saved models and region datasets on the Hugging Face Hub (or any server speaking its API)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import HfApi, constants
from huggingface_hub.utils._runtime import is_xet_available
from safetensors import SafetensorError, safe_open
from timm.models import split_model_name_tag

from ..models.roi_net import model_cfgs
from .local import CONFIG_NAME, WEIGHTS_NAME

# What a model repository receives: weights, config, card and what the card shows; nothing pickled.
MODEL_FILES = (WEIGHTS_NAME, CONFIG_NAME, "README.md", "eval_results.json", "train_config.yaml", "accuracy_by_size.png")
DATASET_PATTERNS = ("README.md", "images/*.parquet", "regions/*.parquet", "build_report.*.json")


class HubPublishError(RuntimeError):
    """A folder could not be published; says whether anything reached the Hub."""


def check_model_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """The folder's ``config.json`` after checking that it names a registered ROI architecture and that
    ``model.safetensors`` is complete and fits it; raises ``ValueError`` saying what is wrong."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ValueError(f"{folder} is not a saved model folder: {path.name} is missing")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON: {error}") from error
    architecture = split_model_name_tag(str(config.get("architecture", "")))[0]
    if architecture not in model_cfgs:
        raise ValueError(
            f"{config_path} names architecture {config.get('architecture')!r}, which is not a registered ROI "
            "model (`roi-attention models` lists them)"
        )
    try:
        with safe_open(str(weights_path), framework="pt") as weights:
            shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights_path} is truncated or not a safetensors file: {error}") from error
    with torch.device("meta"):
        model = timm.create_model(architecture, pretrained=False, **config.get("model_args", {}))
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    if shapes != expected:
        missing = sorted(set(expected) - set(shapes))
        unexpected = sorted(set(shapes) - set(expected))
        misshapen = sorted(k for k in set(shapes) & set(expected) if shapes[k] != expected[k])
        found = "; ".join(
            f"{len(keys)} {what} (first: {', '.join(keys[:3])})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
            if keys
        )
        raise ValueError(f"{weights_path} does not fit {config['architecture']} as configured: {found}")
    return config


def check_dataset_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """The card metadata of a region dataset folder, after checking that every declared split has its files."""
    from ..data.card import read_dataset_info

    folder = Path(folder)
    info = read_dataset_info(folder) if folder.is_dir() else None
    if info is None:
        raise ValueError(f"{folder} is not a region dataset folder (no README.md declaring roi_attention splits)")
    for split in info["splits"]:
        for config in ("images", "regions"):
            if not any((folder / config).glob(f"{split}-*.parquet")):
                raise ValueError(f"{folder} declares split {split!r} but holds no {config}/{split}-*.parquet")
    return info


def _render_card(folder: Path, repo_type: str, repo_id: str) -> None:
    from .cards import is_generated_card

    readme = folder / "README.md"
    if readme.exists() and not is_generated_card(readme):
        return  # a card written by hand is published as it is
    if repo_type == "model":
        from .cards import write_model_card

        write_model_card(folder, repo_id=repo_id)
    else:
        from huggingface_hub.repocard import metadata_load

        from ..data.card import write_dataset_card

        metadata = metadata_load(readme) or {}
        splits = metadata["roi_attention"]["splits"]
        write_dataset_card(folder, metadata, dict.fromkeys(splits, folder), repo_id)


def publish(
    folder: str | os.PathLike,
    repo_id: str,
    repo_type: str = "model",
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
) -> str:
    """Publish a saved model folder (``repo_type="model"``) or a region dataset folder (``"dataset"``) as one
    commit to ``repo_id`` on the Hub (``HF_ENDPOINT``); returns the commit's URL.

    The folder is checked first (complete weights that fit the architecture, or every split's files); a card
    rendered by roi-attention is rendered again to name ``repo_id``. Only weights, configs, cards, results and
    parquet are sent, nothing pickled. A Hub commit lands whole or not at all: if the transfer fails, the
    repository keeps its previous revision and ``HubPublishError`` says so.
    """
    folder = Path(folder)
    if repo_type not in ("model", "dataset"):
        raise ValueError(f"repo_type must be 'model' or 'dataset', got {repo_type!r}")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must be ORG/NAME, got {repo_id!r}")
    if repo_type == "model":
        check_model_folder(folder)
        patterns = [name for name in MODEL_FILES if (folder / name).is_file() or name == "README.md"]
    else:
        check_dataset_folder(folder)
        patterns = list(DATASET_PATTERNS)
    if constants.HF_HUB_OFFLINE:
        raise HubPublishError(f"cannot publish {folder} to {repo_id}: HF_HUB_OFFLINE is set")
    _render_card(folder, repo_type, repo_id)

    api = HfApi(token=token)
    created = False
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        created = True
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type=repo_type,
            revision=revision,
            allow_patterns=patterns,
            commit_message=commit_message or f"Publish {folder.name} with roi-attention",
        )
    except Exception as error:  # httpx transport errors and the Hub's HTTP errors alike
        if isinstance(error, ValueError) and "metadata" in str(error):
            raise HubPublishError(f"the Hub refused the card of {folder}: {error}") from error
        state = (
            "the commit did not complete, and a Hub commit lands whole or not at all: the repository keeps its "
            "previous revision"
            if created
            else "nothing was sent"
        )
        retry = "Run the same command again to retry."
        if is_xet_available() and "xet" in str(error).lower():
            retry = (
                "hf_xet is installed, so huggingface_hub uploads through Xet storage, which this endpoint does not "
                "offer: set HF_HUB_DISABLE_XET=1 to upload through Git LFS."
            )
        raise HubPublishError(
            f"publishing {folder} to {api.endpoint} as {repo_type} {repo_id} failed "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no message'}); {state}. " + retry
        ) from error
    return commit.commit_url
