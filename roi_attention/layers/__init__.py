"""Building blocks of the ROI side branch."""

from .crop import crop_boxes, crop_to_roi, mask_boxes
from .head import CosineClassifier
from .mask import MASK_RESIZE_MODES, RoiInputError, resize_mask, split_roi_input
from .merge import (
    MERGE_LAYERS,
    TOKEN_MERGE_LAYERS,
    MaskAttentionAdd,
    MaskAttentionMul,
    MaskGate,
    TokenLayout,
    TokenMaskAttentionAdd,
    TokenMaskAttentionMul,
    TokenMaskGate,
    create_merge_layer,
)

__all__ = [
    "MASK_RESIZE_MODES",
    "MERGE_LAYERS",
    "TOKEN_MERGE_LAYERS",
    "CosineClassifier",
    "MaskAttentionAdd",
    "MaskAttentionMul",
    "MaskGate",
    "RoiInputError",
    "TokenLayout",
    "TokenMaskAttentionAdd",
    "TokenMaskAttentionMul",
    "TokenMaskGate",
    "create_merge_layer",
    "crop_boxes",
    "crop_to_roi",
    "mask_boxes",
    "resize_mask",
    "split_roi_input",
]
