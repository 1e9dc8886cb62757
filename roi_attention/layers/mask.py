"""Checking, unpacking and resizing the ROI mask that travels with an image."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

MaskResize = Literal["max", "area", "bilinear"]
MASK_RESIZE_MODES: tuple[str, ...] = ("max", "area", "bilinear")


class RoiInputError(ValueError):
    """An image or mask given to an ROI model is not of the expected form."""


def is_tracing() -> bool:
    """True while torch.compile, torch.export, ONNX export or TorchScript traces the model."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
    )


def split_roi_input(x: Tensor, mask: Tensor | None = None, check_values: bool = True) -> tuple[Tensor, Tensor]:
    """Return ``(image, mask)`` as ``(B,3,H,W)`` and ``(B,1,H,W)`` in the image's dtype.

    ``x`` is either the packed ``(B,4,H,W)`` tensor (RGB + mask channel) with ``mask=None``, or a
    ``(B,3,H,W)`` image with ``mask`` of shape ``(B,1,H,W)`` or ``(B,H,W)``. With ``check_values`` the
    values are checked too (finite image, mask in [0, 1]); that check is skipped while tracing.
    """
    if not isinstance(x, Tensor):
        raise RoiInputError(f"expected the image as a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        hint = " (add a batch dimension: x.unsqueeze(0))" if x.ndim == 3 else ""
        raise RoiInputError(f"expected a 4-D input (B,C,H,W), got {x.ndim}-D with shape {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise RoiInputError(f"expected a floating-point normalised image, got dtype {x.dtype}")
    channels = x.shape[1]
    if mask is None:
        if channels == 3:
            raise RoiInputError(
                "got a 3-channel image without a mask: pass mask=(B,1,H,W) or (B,H,W), "
                "or pack the mask as a 4th channel (B,4,H,W)"
            )
        if channels != 4:
            raise RoiInputError(f"expected a packed (B,4,H,W) input (RGB + mask), got {channels} channels")
        image, mask = x[:, :3], x[:, 3:]
    else:
        if channels == 4:
            raise RoiInputError(
                "got a packed 4-channel input and a mask= as well: pass either (B,4,H,W) alone, "
                "or a (B,3,H,W) image with mask="
            )
        if channels != 3:
            raise RoiInputError(f"expected a (B,3,H,W) image with mask=, got {channels} channels")
        if not isinstance(mask, Tensor):
            raise RoiInputError(f"expected the mask as a torch.Tensor, got {type(mask).__name__}")
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
        elif mask.ndim != 4 or mask.shape[1] != 1:
            raise RoiInputError(f"expected a mask of shape (B,1,H,W) or (B,H,W), got shape {tuple(mask.shape)}")
        if mask.shape[0] != x.shape[0]:
            raise RoiInputError(
                f"mask batch size {mask.shape[0]} differs from image batch size {x.shape[0]}: "
                "give one mask per image (masks are never broadcast)"
            )
        if mask.shape[-2:] != x.shape[-2:]:
            raise RoiInputError(
                f"mask size {tuple(mask.shape[-2:])} (H,W) differs from image size {tuple(x.shape[-2:])}: "
                "resize the mask with nearest-neighbour interpolation to the image's size"
            )
        image, mask = x, mask.to(x.dtype)
    if check_values and not is_tracing():
        _check_values(image, mask)
    return image, mask


def _raise_for_mask_range(low: float, high: float) -> None:
    if high > 1 and high <= 255 and low >= 0:
        raise RoiInputError(
            f"mask values reach {high:g}, expected values in [0, 1]: this looks like a 0/255 mask; "
            "pass mask / 255 or (mask > 0)"
        )
    if low < 0 or high > 1:
        raise RoiInputError(
            f"mask values span [{low:g}, {high:g}], expected values in [0, 1] (1 = inside the ROI); for random "
            "input, as timm's benchmark.py makes, create the model with check_inputs=False"
        )


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


def resize_mask(mask: Tensor, size: tuple[int, int] | torch.Size, mode: MaskResize = "max") -> Tensor:
    """Resize a ``(B,1,H,W)`` ROI mask to ``size`` = (h, w), the spatial size of a feature map.

    ``max``: a cell is the mask's largest value inside it, so a one-pixel ROI survives at any stride.
    ``area``: a cell is the fraction of it covered by the ROI (small ROIs become faint, never zero).
    ``bilinear``: the paper author's resize; an ROI smaller than the stride can vanish.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(mask.shape[-2:]) == size:
        return mask
    if mode == "max":
        return F.adaptive_max_pool2d(mask, size)
    if mode == "area":
        return F.adaptive_avg_pool2d(mask, size)
    if mode == "bilinear":
        return F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
    raise ValueError(f"unknown mask_resize {mode!r}, expected one of {MASK_RESIZE_MODES}")
