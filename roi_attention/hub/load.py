"""Loading an ROI model from a registry name, a saved folder or a Hub id."""

from __future__ import annotations

import json
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
    if name.startswith(("local-dir:", "hf-hub:")):
        _check_architecture(name)
    model = timm.create_model(name, pretrained=True, **kwargs)
    if not isinstance(model, RoiAttentionNet):
        raise ValueError(f"{spec} is a {type(model).__name__}, not an ROI model (roi_* architectures)")
    return model.eval()


def _check_architecture(name: str) -> None:
    """Refuse a folder or Hub repo whose config.json names an architecture this installation does not have."""
    kind, location = name.split(":", 1)
    if kind == "local-dir":
        path = Path(location) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{location} holds no config.json: not a saved model folder")
    else:
        from huggingface_hub import hf_hub_download

        repo_id, _, revision = location.partition("@")
        path = Path(hf_hub_download(repo_id, "config.json", revision=revision or None))
    try:
        architecture = json.loads(path.read_text()).get("architecture")
    except json.JSONDecodeError as error:
        raise ValueError(f"the config.json of {location} is not valid JSON: {error}") from error
    if not architecture or not is_model(split_model_name_tag(architecture)[0]):
        raise ValueError(
            f"the config.json of {location} names architecture {architecture!r}, which is not registered here: "
            "it needs a roi-attention version that has it (`roi-attention models` lists this one's)"
        )


def label_names(model: RoiAttentionNet) -> list[str]:
    """Class names of the model's outputs: its config's, ImageNet's for 1000 classes, else ``class i``."""
    names = model.pretrained_cfg.get("label_names")
    if names and len(names) == model.num_classes:
        return list(names)
    if model.num_classes == 1000:
        info = timm.data.ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [f"class {i}" for i in range(model.num_classes)]
