"""Checking, unpacking and resizing the ROI mask that travels with an image.

Everything here is TorchScript-compatible and, for ``torch.fx``, called as a leaf function (its checks and
branches run on the real tensors when the traced graph runs).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor

MaskResize = Literal["max", "area", "bilinear"]
MASK_RESIZE_MODES: tuple[str, ...] = ("max", "area", "bilinear")


class RoiInputError(ValueError):
    """An image or mask given to an ROI model is not of the expected form."""


@torch.jit.unused
def _max_of_cells(mask: Tensor, rows: int, columns: int) -> Tensor:
    """``adaptive_max_pool2d`` where the size divides exactly, as the maximum of strided slices: rows, then
    columns (several times faster on CPUs for a one-channel mask)."""
    out = mask[..., 0::rows, :]
    for row in range(1, rows):
        out = torch.maximum(out, mask[..., row::rows, :])
    cells = out[..., 0::columns]
    for column in range(1, columns):
        cells = torch.maximum(cells, out[..., column::columns])
    return cells


@torch.jit.unused
def is_tracing() -> bool:
    """True while torch.compile, torch.export, ONNX export, TorchScript or torch.fx traces the model."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.fx._symbolic_trace.is_fx_symbolic_tracing()
    )


@register_notrace_function
def split_roi_input(
    x: Tensor, mask: Tensor | None = None, in_chans: int = 3, check_values: bool = True
) -> tuple[Tensor, Tensor]:
    """Return ``(image, mask)`` as ``(B,in_chans,H,W)`` and ``(B,1,H,W)`` in the image's dtype.

    ``x`` is an image of ``in_chans`` channels with ``mask`` of shape ``(B,1,H,W)`` or ``(B,H,W)``; the same
    image without a mask, which makes the whole photo the region (a mask of ones); or the packed
    ``(B,in_chans+1,H,W)`` tensor (image + mask channel). With ``check_values`` the values are checked too
    (finite image, mask in [0, 1]), except on the meta device and while tracing or scripting.
    """
    if not torch.jit.is_scripting():
        if not isinstance(x, Tensor):
            raise RoiInputError(f"expected the image as a torch.Tensor, got {type(x).__name__}")
        if mask is not None and not isinstance(mask, Tensor):
            raise RoiInputError(f"expected the mask as a torch.Tensor, got {type(mask).__name__}")
    if x.dim() != 4:
        hint = " (add a batch dimension: x.unsqueeze(0))" if x.dim() == 3 else ""
        raise RoiInputError(f"expected a 4-D input (B,C,H,W), got {x.dim()}-D with shape {list(x.shape)}{hint}")
    if not x.is_floating_point():
        raise RoiInputError(f"expected a floating-point normalised image, got dtype {x.dtype}")
    channels = x.shape[1]
    if mask is None:
        if channels == in_chans:
            image = x
            out_mask = torch.ones_like(x[:, :1])  # no mask: the whole photo is the region
        elif channels == in_chans + 1:
            image, out_mask = x[:, :in_chans], x[:, in_chans:]
        else:
            raise RoiInputError(
                f"expected a {in_chans}-channel image (with mask=, or alone for the whole photo) or the packed "
                f"(B,{in_chans + 1},H,W) input (image + mask), got {channels} channels"
            )
    else:
        if channels == in_chans + 1:
            raise RoiInputError(
                f"got a packed {channels}-channel input and a mask= as well: pass either (B,{channels},H,W) "
                f"alone, or a (B,{in_chans},H,W) image with mask="
            )
        if channels != in_chans:
            raise RoiInputError(f"expected a (B,{in_chans},H,W) image with mask=, got {channels} channels")
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)
        elif mask.dim() != 4 or mask.shape[1] != 1:
            raise RoiInputError(f"expected a mask of shape (B,1,H,W) or (B,H,W), got shape {list(mask.shape)}")
        if mask.shape[0] != x.shape[0]:
            raise RoiInputError(
                f"mask batch size {mask.shape[0]} differs from image batch size {x.shape[0]}: "
                "give one mask per image (masks are never broadcast)"
            )
        if mask.shape[-2] != x.shape[-2] or mask.shape[-1] != x.shape[-1]:
            raise RoiInputError(
                f"mask size ({mask.shape[-2]}, {mask.shape[-1]}) (H,W) differs from image size "
                f"({x.shape[-2]}, {x.shape[-1]}): resize the mask with nearest-neighbour interpolation to the "
                "image's size"
            )
        image, out_mask = x, mask.to(x.dtype)
    if not torch.jit.is_scripting():
        if check_values and x.device.type != "meta" and not is_tracing():
            _check_values(image, out_mask)
    return image, out_mask


def _raise_for_mask_range(low: float, high: float) -> None:
    if high > 1 and high <= 255 and low >= 0:
        raise RoiInputError(
            f"mask values reach {high:g}, expected values in [0, 1]: this looks like a 0/255 mask; "
            "pass mask / 255 or (mask > 0)"
        )
    if low < 0 or high > 1:
        raise RoiInputError(
            f"mask values span [{low:g}, {high:g}], expected values in [0, 1] (1 = inside the ROI); for random "
            "packed input, create the model with check_inputs=False"
        )


@torch.jit.unused
def _check_values(image: Tensor, mask: Tensor) -> None:
    # One pass over each tensor and one device sync; details are computed only when something is wrong.
    # A NaN or infinity anywhere makes the sum non-finite (so does a sum beyond float range: then it is counted).
    low, high = torch.aminmax(mask) if mask.numel() else (mask.new_zeros(()), mask.new_zeros(()))
    image_sum, low, high = torch.stack([image.sum(dtype=torch.float32), low.float(), high.float()]).tolist()
    if not math.isfinite(image_sum):
        bad = int((~torch.isfinite(image)).sum())
        if bad:
            raise RoiInputError(f"the image holds {bad} NaN or infinite values")
    if not (math.isfinite(low) and math.isfinite(high)):
        raise RoiInputError(f"the mask holds {int((~torch.isfinite(mask)).sum())} NaN or infinite values")
    _raise_for_mask_range(low, high)


@register_notrace_function
def resize_mask(mask: Tensor, size: list[int], mode: str = "max") -> Tensor:
    """Resize a ``(B,1,H,W)`` ROI mask to ``size`` = (h, w), the spatial size of a feature map.

    ``max``: a cell is the mask's largest value inside it, so a one-pixel ROI survives at any stride.
    ``area``: a cell is the fraction of it covered by the ROI (small ROIs become faint, never zero).
    ``bilinear``: the paper author's resize; an ROI smaller than the stride can vanish.
    """
    height, width = int(size[0]), int(size[1])
    if mask.shape[-2] == height and mask.shape[-1] == width:
        return mask
    if mode == "max":
        if not torch.jit.is_scripting():
            if not is_tracing() and mask.shape[-2] % height == 0 and mask.shape[-1] % width == 0:
                return _max_of_cells(mask, mask.shape[-2] // height, mask.shape[-1] // width)
        return F.adaptive_max_pool2d(mask, [height, width])
    if mode == "area":
        return F.adaptive_avg_pool2d(mask, [height, width])
    if mode == "bilinear":
        return F.interpolate(mask, size=[height, width], mode="bilinear", align_corners=False)
    raise ValueError(f"unknown mask_resize '{mode}', expected one of max, area, bilinear")
