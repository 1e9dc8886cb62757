"""ROI-attention model families; importing registers every model with timm."""

from .roi_net import (
    BACKBONES,
    HUB_ORG,
    VARIANTS,
    PretrainedWeightsError,
    RoiAttentionNet,
    RoiVariant,
    checkpoint_filter_fn,
    model_cfgs,
    resolve_merge_points,
)

__all__ = [
    "BACKBONES",
    "HUB_ORG",
    "VARIANTS",
    "PretrainedWeightsError",
    "RoiAttentionNet",
    "RoiVariant",
    "checkpoint_filter_fn",
    "model_cfgs",
    "resolve_merge_points",
]
