"""Converting the paper author's released checkpoints (``torch.save`` state dicts) into this project's format.

The author's models are torchvision ResNet50s under the prefix ``Net.`` with their attention convolutions as
``Attentionlayer`` (the 2022 COCO model: first layer, addition, BGR input) or ``ValeLayers.K`` (first merge
point, then after layer1..layer4). They take 0-255 pixels and normalise inside the model with one mean per
channel and a standard deviation of 65; the converted model's config carries that normalisation instead, and a
BGR model's first convolution is reordered to take RGB, so that it predicts what the original predicts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import timm
import torch

from ..models.roi_net import VARIANTS, checkpoint_filter_fn
from .local import save_model

AUTHOR_MEAN = (123.68, 116.779, 103.939)  # per input channel, in the model's own channel order
AUTHOR_STD = 65.0
AUTHOR_BACKBONE = "resnet50"
# The variants the author trained: attention maps (add/mul) and the two hard-attention baselines.
CONVERTIBLE_VARIANTS = tuple(name for name, variant in VARIANTS.items() if variant.merge)


def _author_merge_keys(state: dict[str, torch.Tensor]) -> dict[int, str]:
    """Merge-point index -> the author's prefix of its attention conv."""
    prefixes = {key.rsplit(".", 1)[0] for key in state if key.startswith(("Attentionlayer.", "ValeLayers."))}
    if "Attentionlayer" in prefixes:
        if len(prefixes) > 1:
            raise ValueError(f"the checkpoint holds both Attentionlayer and ValeLayers convs: {sorted(prefixes)}")
        return {0: "Attentionlayer"}
    merges = {}
    for prefix in prefixes:
        index = prefix.split(".", 1)[1]
        if not index.isdigit():
            raise ValueError(f"unexpected attention layer {prefix!r} (expected ValeLayers.0 to ValeLayers.4)")
        merges[int(index)] = prefix
    return merges


def read_state_dict(checkpoint: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save``, read with ``torch.load(weights_only=True)`` (no code from the file
    runs): the one way this project opens a pickle."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path} is not a PyTorch state dict that loads with weights_only=True "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state


def load_original_state(checkpoint: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The author's state dict (``read_state_dict``), checked to be one of the author's ROI classifiers."""
    state = read_state_dict(checkpoint)
    if not any(key.startswith("Net.") for key in state):
        raise ValueError(f"{checkpoint} has no Net.* tensors: not one of the author's ROI classifiers")
    return state


def convert_original_checkpoint(
    checkpoint: str | os.PathLike,
    variant: str,
    num_classes: int,
    out: str | os.PathLike,
    channel_order: str = "auto",
    label_names: Sequence[str] | None = None,
    mask_resize: str = "bilinear",
    overwrite: bool = False,
) -> Path:
    """Convert one of the author's checkpoints into a saved ``roi_resnet50_{variant}`` folder at ``out``.

    ``channel_order``: ``rgb``, ``bgr`` or ``auto`` (BGR for the 2022 COCO model, recognised by its
    ``Attentionlayer``). ``mask_resize``: ``bilinear`` resizes the mask as the original does (same predictions);
    ``max`` keeps very small regions alive at every merge point.
    """
    if variant not in CONVERTIBLE_VARIANTS:
        raise ValueError(f"the author's models are the variants {CONVERTIBLE_VARIANTS}, got {variant!r}")
    if channel_order not in ("auto", "rgb", "bgr"):
        raise ValueError(f"channel_order must be auto, rgb or bgr, got {channel_order!r}")
    state = load_original_state(checkpoint)
    unknown = sorted(k for k in state if not k.startswith(("Net.", "Attentionlayer.", "ValeLayers.")))
    if unknown:
        raise ValueError(f"{checkpoint} holds tensors outside the author's layout: {', '.join(unknown[:5])}")
    classes = state.get("Net.fc.weight")
    if classes is None or classes.shape[0] != num_classes:
        found = "no Net.fc.weight" if classes is None else f"{classes.shape[0]} outputs"
        raise ValueError(f"the checkpoint's classifier has {found}; --num-classes is {num_classes}")
    if label_names is not None and len(label_names) != num_classes:
        raise ValueError(f"got {len(label_names)} label names for {num_classes} classes")

    model = timm.create_model(
        f"roi_{AUTHOR_BACKBONE}_{variant}", pretrained=False, num_classes=num_classes, mask_resize=mask_resize
    )
    converted = {f"backbone.{key[4:]}": value for key, value in state.items() if key.startswith("Net.")}
    merges = _author_merge_keys(state)
    # The hard-attention variants multiply by the mask itself: no attention convs to carry over.
    points = [name for name, _ in model.merge_points] if VARIANTS[variant].merge != "gate" else []
    if sorted(merges) != list(range(len(points))):
        raise ValueError(
            f"variant {variant} merges the mask at {len(points)} point(s) ({', '.join(points) or 'none'}), "
            f"the checkpoint has attention convs {sorted(merges.values()) or 'none'}"
        )
    for index, prefix in merges.items():
        for name in ("weight", "bias"):
            converted[f"roi_branch.{points[index].replace('.', '_')}.{name}"] = state[f"{prefix}.{name}"]

    bgr = channel_order == "bgr" or (channel_order == "auto" and "Attentionlayer" in merges.values())
    mean = tuple(value / 255 for value in AUTHOR_MEAN)
    if bgr:  # the original takes B, G, R: reorder its first conv to take R, G, B, and the means with it
        converted["backbone.conv1.weight"] = converted["backbone.conv1.weight"].flip(1).contiguous()
        mean = mean[::-1]
    model.load_state_dict(checkpoint_filter_fn(converted, model))
    model.pretrained_cfg = dict(
        model.pretrained_cfg,
        mean=mean,
        std=(AUTHOR_STD / 255,) * 3,
        description=f"converted from the paper author's checkpoint {Path(checkpoint).name} ({'BGR' if bgr else 'RGB'})",
        notes=("input: RGB normalised with the author's mean and std 65/255, with the ROI mask as mask=",),
    )
    return save_model(model, out, label_names=label_names, overwrite=overwrite, card=True)
