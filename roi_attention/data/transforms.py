"""Joint image + mask transforms (torchvision.transforms.v2) producing the packed model input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2


def eval_transform(data_config: dict[str, Any]) -> v2.Compose:
    """Resize (shorter side to the model's input size, aspect kept) and normalise an image with its masks.

    Masks are ``tv_tensors.Mask`` and are resized with nearest neighbour, so they stay binary.
    """
    size = int(min(data_config["input_size"][1:]))
    return v2.Compose(
        [
            v2.Resize(size, antialias=True),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(mean=list(data_config["mean"][:3]), std=list(data_config["std"][:3])),
        ]
    )


def pack(image: Tensor, masks: Tensor) -> Tensor:
    """``(N,4,H,W)``: the ``(3,H,W)`` image repeated once per ``(N,H,W)`` mask, the mask as channel 4."""
    masks = masks.to(image.dtype)
    return torch.cat([image.expand(masks.shape[0], -1, -1, -1), masks[:, None]], dim=1)


def prepare_regions(photo: np.ndarray, masks: Sequence[np.ndarray], data_config: dict[str, Any]) -> Tensor:
    """The packed model input for one ``(H,W,3)`` uint8 photo and its ``(H,W)`` masks (non-zero = region)."""
    image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1))
    stacked = tv_tensors.Mask(torch.from_numpy(np.stack([np.asarray(m) != 0 for m in masks])).to(torch.uint8))
    image, stacked = eval_transform(data_config)(image, stacked)
    return pack(image.as_subclass(Tensor), stacked.as_subclass(Tensor))
