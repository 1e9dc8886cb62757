"""Joint image + mask transforms (torchvision.transforms.v2 with tv_tensors) producing the packed model input.

Images and masks move together; masks are resized with nearest neighbour (never interpolated into soft
values), and a resize that would erase a small ROI keeps every pixel the ROI touches instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


class EmptyRegionError(ValueError):
    """A region's mask is empty (before or after a transform)."""


def _masks(flat_inputs: Sequence[Any]) -> list[tv_tensors.Mask]:
    return [x for x in flat_inputs if isinstance(x, tv_tensors.Mask)]


def _image_size(flat_inputs: Sequence[Any]) -> tuple[int, int]:
    return tuple(v2.query_size(flat_inputs))  # type: ignore[return-value]


class RoiResize(v2.Transform):
    """Resize so the shorter side is ``size`` (or a random side in ``[size, max_size]``), or, with
    ``longer=True``, so the longer side is ``size`` (the sizes timm's ``ResizeKeepRatio`` computes). Images
    are resampled with ``interpolation``; a mask that nearest-neighbour would empty keeps every pixel its region
    touches at the new size."""

    def __init__(
        self, size: int, max_size: int | None = None, longer: bool = False, interpolation: str = "bilinear"
    ) -> None:
        super().__init__()
        self.size, self.max_size, self.longer = size, max_size, longer
        self.interpolation = v2.InterpolationMode(interpolation)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _image_size(flat_inputs)
        side = self.size if self.max_size is None else _randint(self.size, self.max_size)
        ratio = (max if self.longer else min)(height / side, width / side)
        return dict(size=[max(1, round(height / ratio)), max(1, round(width / ratio))])

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            # nearest-exact samples each output pixel at its centre, as the image resize does (plain nearest
            # samples its corner and shifts the mask by half an output pixel).
            # One mask at a time (resize copies its input whole: at 16 Mpx, 16 MB a mask).
            sources = inpt.as_subclass(Tensor).reshape(-1, *inpt.shape[-2:])
            targets = torch.empty((len(sources), *params["size"]), dtype=inpt.dtype)
            for source, target in zip(sources, targets, strict=True):
                target.copy_(
                    TF.resize(source[None], params["size"], interpolation=v2.InterpolationMode.NEAREST_EXACT)[0]
                )
                if not bool(target.any()) and bool(source.any()):  # too small for the new size: max-pooled
                    target.copy_(F.adaptive_max_pool2d(source[None].float(), params["size"])[0].to(target.dtype))
            return tv_tensors.wrap(targets.reshape(*inpt.shape[:-2], *params["size"]), like=inpt)
        return TF.resize(inpt, params["size"], interpolation=self.interpolation, antialias=True)


class RandomRoiCrop(v2.Transform):
    """A random ``size`` x ``size`` window that contains the ROI's box, or lies inside the box when the ROI is
    larger than the window (the paper author's crop). Images smaller than the window are padded."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        masks = _masks(flat_inputs)
        if len(masks) != 1:
            raise ValueError(f"RandomRoiCrop needs exactly one mask, got {len(masks)}")
        mask = masks[0].reshape(-1, *masks[0].shape[-2:]).amax(0, keepdim=True)
        if not bool(mask.any()):
            raise EmptyRegionError("RandomRoiCrop got an empty mask")
        x0, y0, x1, y1 = (int(v) for v in masks_to_boxes(mask)[0])
        height, width = mask.shape[-2:]
        top = _window_start(y0, y1 + 1, height, self.size)
        left = _window_start(x0, x1 + 1, width, self.size)
        return dict(top=top, left=left)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return TF.crop(inpt, params["top"], params["left"], self.size, self.size)


def _window_start(lo: int, hi: int, length: int, window: int) -> int:
    """Start of a random window of ``window`` pixels over ``[0, length)`` holding ``[lo, hi)``, or inside it."""
    if length <= window:
        return 0  # the crop pads past the end
    if hi - lo <= window:
        first, last = max(0, hi - window), min(lo, length - window)
    else:
        first, last = lo, hi - window
    return _randint(first, last)


def _randint(low: int, high: int) -> int:
    """A uniform integer in ``[low, high]`` from torch's generator (seeded per DataLoader worker)."""
    return int(torch.randint(low, high + 1, ()).item())


def _interpolation(data_config: dict[str, Any]) -> str:
    return data_config.get("interpolation") or "bilinear"


def _normalize(data_config: dict[str, Any]) -> list[v2.Transform]:
    return [
        v2.ToImage(),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean=list(data_config["mean"][:3]), std=list(data_config["std"][:3])),
    ]


def train_transform(data_config: dict[str, Any], scale: tuple[float, float] = (1.0, 2.0)) -> v2.Compose:
    """Random scale (shorter side between ``scale`` times the input size), ROI-preserving random crop to the
    input size, horizontal flip, normalisation."""
    size = int(min(data_config["input_size"][1:]))
    return v2.Compose(
        [
            RoiResize(round(size * scale[0]), round(size * scale[1]), interpolation=_interpolation(data_config)),
            RandomRoiCrop(size),
            v2.RandomHorizontalFlip(),
            *_normalize(data_config),
        ]
    )


def eval_transform(data_config: dict[str, Any]) -> v2.Compose:
    """The whole photo, its longer side resized to the input size and padded to a square with the mean colour,
    normalised: the geometry of ``timm.data.create_transform(**data_config)`` for a model's data config
    (``crop_mode="border"``, ``crop_pct=1``), with the masks carried along."""
    size = int(min(data_config["input_size"][1:]))
    return v2.Compose(
        [
            RoiResize(size, longer=True, interpolation=_interpolation(data_config)),
            *_normalize(data_config),
            v2.CenterCrop(size),  # pads the shorter side with zeros: the mean colour, an empty mask
        ]
    )


def pack(image: Tensor, masks: Tensor) -> Tensor:
    """``(N,4,H,W)``: the ``(3,H,W)`` image repeated once per ``(N,H,W)`` mask, the mask as channel 4."""
    masks = masks.to(image.dtype)
    return torch.cat([image.expand(masks.shape[0], -1, -1, -1), masks[:, None]], dim=1)


def prepare_regions(photo: np.ndarray, masks: Sequence[np.ndarray], data_config: dict[str, Any]) -> Tensor:
    """The packed model input ``(N,4,H,W)`` for one ``(H,W,3)`` uint8 photo and its ``(H,W)`` masks (non-zero =
    region): the image as ``timm.data.create_transform(**data_config)`` gives it, each mask at its place."""
    image = tv_tensors.Image(torch.from_numpy(np.array(photo, order="C")).permute(2, 0, 1))  # a writable copy
    masks = [np.asarray(m) for m in masks]
    regions = np.empty((len(masks), *(masks[0].shape if masks else photo.shape[:2])), np.bool_)
    for region, mask in zip(regions, masks, strict=True):
        np.not_equal(mask, 0, out=region)  # one byte a pixel, no intermediate copy
    stacked = tv_tensors.Mask(torch.from_numpy(regions).view(torch.uint8))
    image, stacked = eval_transform(data_config)(image, stacked)
    return pack(image.as_subclass(Tensor), stacked.as_subclass(Tensor))
