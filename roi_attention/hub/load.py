"""Loading an ROI model from a registry name, a saved folder or a Hub id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from timm.models import is_model, split_model_name_tag

from ..models import RoiAttentionNet


def resolve_model_name(spec: str) -> str:
    """The ``timm.create_model`` name for ``spec``: a registered name (``roi_resnet50_add_l1.coco``), a folder
    written by ``save_model`` or training, ``local-dir:DIR``, ``hf-hub:ORG/NAME`` or ``ORG/NAME``."""
    if spec.startswith(("hf-hub:", "local-dir:")):
        return spec
    if Path(spec).is_dir():
        return f"local-dir:{spec}"
    if is_model(split_model_name_tag(spec)[0]):
        return spec
    if spec.count("/") == 1 and not Path(spec).exists():
        return f"hf-hub:{spec}"
    raise ValueError(
        f"unknown model {spec!r}: expected a registered ROI model (`roi-attention models` lists them), "
        "a folder holding config.json and model.safetensors, or a Hub id ORG/NAME"
    )


def load_model(spec: str, weights: str | None = None, **kwargs: Any) -> RoiAttentionNet:
    """An ROI model with its weights, in eval mode; see ``resolve_model_name`` for ``spec``. ``weights``: a
    safetensors file for a registered name (a backbone or full ROI checkpoint), instead of its Hub weights."""
    name = resolve_model_name(spec)
    if weights is not None:
        if name.startswith(("hf-hub:", "local-dir:")):
            raise ValueError("--weights goes with a registered model name, not a folder or Hub id")
        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights file {weights} does not exist")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(weights))
    if name.startswith("local-dir:") and not (Path(name.split(":", 1)[1]) / "config.json").is_file():
        raise FileNotFoundError(f"{name.split(':', 1)[1]} holds no config.json: not a saved model folder")
    model = timm.create_model(name, pretrained=True, **kwargs)
    if not isinstance(model, RoiAttentionNet):
        raise ValueError(f"{spec} is a {type(model).__name__}, not an ROI model (roi_* architectures)")
    return model.eval()


def label_names(model: RoiAttentionNet) -> list[str]:
    """Class names of the model's outputs: its config's, ImageNet's for 1000 classes, else ``class i``."""
    names = model.pretrained_cfg.get("label_names")
    if names and len(names) == model.num_classes:
        return list(names)
    if model.num_classes == 1000:
        info = timm.data.ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [f"class {i}" for i in range(model.num_classes)]
