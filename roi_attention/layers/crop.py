"""Cropping the ROI's box out of an image (the crop baseline, paper Fig. 2b)."""

from __future__ import annotations

import torch
from timm.layers import register_notrace_function
from torch import Tensor
from torchvision.ops import roi_align


def mask_boxes(mask: Tensor) -> Tensor:
    """Boxes ``(B,4)`` as ``x0, y0, x1, y1`` pixel edges enclosing each ``(B,1,H,W)`` mask's non-zero pixels.

    An empty mask gets the whole image.
    """
    height, width = mask.shape[-2], mask.shape[-1]
    inside = mask[:, 0] > 0
    rows, cols = inside.any(dim=2), inside.any(dim=1)
    ys = torch.arange(height, device=mask.device)
    xs = torch.arange(width, device=mask.device)
    y0 = torch.where(rows, ys, height).amin(dim=1)
    y1 = torch.where(rows, ys + 1, 0).amax(dim=1)
    x0 = torch.where(cols, xs, width).amin(dim=1)
    x1 = torch.where(cols, xs + 1, 0).amax(dim=1)
    empty = ~rows.any(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(mask.dtype)
    full = torch.tensor([0.0, 0.0, float(width), float(height)], dtype=mask.dtype, device=mask.device)
    return torch.where(empty[:, None], full, boxes)


def crop_boxes(boxes: Tensor, output_size: list[int], margin: float) -> Tensor:
    """Grow ``boxes`` to the aspect ratio of ``output_size`` (h, w), then by ``margin`` of their size per side."""
    out_h, out_w = float(output_size[0]), float(output_size[1])
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    w = torch.maximum(w, h * out_w / out_h)
    h = w * out_h / out_w
    scale = 1.0 + 2.0 * margin
    w, h = w * scale, h * scale
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)


@register_notrace_function
def crop_to_roi(image: Tensor, mask: Tensor, output_size: list[int], margin: float = 0.1) -> Tensor:
    """Crop each image to its mask's box (grown to the output's aspect ratio and by ``margin``) and resize it.

    Outside the image the crop is zero, the mean colour of a normalised image. TorchScript-compatible; a leaf
    function for ``torch.fx``.
    """
    # torchvision's CPU kernel has no half precision: there the crop is sampled in float32.
    dtype = (
        torch.float32 if image.device.type == "cpu" and image.dtype in (torch.bfloat16, torch.float16) else image.dtype
    )
    boxes = crop_boxes(mask_boxes(mask), output_size, margin).to(dtype)
    index = torch.arange(image.shape[0], device=image.device, dtype=dtype)[:, None]
    crops = roi_align(
        image.to(dtype),
        torch.cat([index, boxes], dim=1),
        output_size=[int(output_size[0]), int(output_size[1])],
        spatial_scale=1.0,
        sampling_ratio=1,
        aligned=True,
    )
    return crops.to(image.dtype)
