"""ROI-attention model families; importing registers every model with timm."""

from .roi_net import (
    BACKBONES,
    HUB_ORG,
    VARIANTS,
    PretrainedWeightsError,
    RoiAttentionNet,
    RoiVariant,
    ScriptableRoiNet,
    WiringError,
    checkpoint_filter_fn,
    classifier_names,
    model_cfgs,
)

__all__ = [
    "BACKBONES",
    "HUB_ORG",
    "VARIANTS",
    "PretrainedWeightsError",
    "RoiAttentionNet",
    "RoiVariant",
    "ScriptableRoiNet",
    "WiringError",
    "checkpoint_filter_fn",
    "classifier_names",
    "model_cfgs",
]
