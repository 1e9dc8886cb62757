"""Classifying regions of a user's photo: reading photos and masks in the forms people have them."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools import mask as mask_utils

from .data.transforms import prepare_regions
from .hub.load import label_names


class InputFileError(ValueError):
    """A photo or mask file cannot be used; the message says why."""


def read_photo(path: str | os.PathLike) -> np.ndarray:
    """An ``(H,W,3)`` uint8 RGB photo as displayed: EXIF rotation applied; greyscale, RGBA (alpha dropped),
    palette and 16-bit files converted."""
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
    except FileNotFoundError as error:
        raise InputFileError(f"photo {path} does not exist") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise InputFileError(f"photo {path} cannot be read as an image: {error}") from error
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        grey = np.clip(np.round(values / top * 255), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def read_mask(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """A ``(H,W)`` bool mask for a photo of ``size`` = (H, W) from a PNG (any non-zero pixel is the region: 0/1,
    0/255, ...), or a JSON with COCO RLE (``{"size", "counts"}``), polygons (``[[x, y, ...], ...]``) or a COCO
    annotation (``{"segmentation": ...}``)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"mask {path} does not exist")
    if path.suffix.lower() == ".json":
        mask = _mask_from_json(path, size)
    else:
        try:
            with Image.open(path) as image:
                image.load()
                mask = np.asarray(image)
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise InputFileError(f"mask {path} cannot be read as an image: {error}") from error
        if mask.ndim == 3:
            mask = mask.any(axis=2)
    mask = mask != 0
    if mask.shape != tuple(size):
        raise InputFileError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} (WxH), the photo {size[1]}x{size[0]}: "
            "draw the mask on the photo as displayed (after EXIF rotation), at its size"
        )
    if not mask.any():
        raise InputFileError(f"mask {path} is empty: no pixel marks the region")
    return mask


def _mask_from_json(path: Path, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputFileError(f"mask {path} is not valid JSON: {error}") from error
    if isinstance(data, dict) and "segmentation" in data:
        data = data["segmentation"]
    try:
        if isinstance(data, dict) and "counts" in data and "size" in data:
            if list(data["size"]) != [height, width]:
                raise InputFileError(
                    f"mask {path} is an RLE of size {data['size'][1]}x{data['size'][0]} (WxH), "
                    f"the photo {width}x{height}"
                )
            rle = mask_utils.frPyObjects(data, height, width) if isinstance(data["counts"], list) else data
            if isinstance(rle["counts"], str):
                rle = {**rle, "counts": rle["counts"].encode("ascii")}
            return mask_utils.decode(rle)
        if isinstance(data, list) and data and all(isinstance(p, list) for p in data):
            if any(len(p) < 6 or len(p) % 2 for p in data):
                raise InputFileError(f"mask {path}: each polygon needs at least 3 (x, y) points as a flat list")
            return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(data, height, width)))
    except InputFileError:
        raise
    except (TypeError, ValueError, KeyError) as error:
        raise InputFileError(f"mask {path} holds malformed RLE or polygons: {error}") from error
    raise InputFileError(
        f"mask {path}: expected COCO RLE {{'size', 'counts'}}, polygons [[x, y, ...], ...] or an annotation "
        "with 'segmentation'"
    )


def predict_regions(
    model: torch.nn.Module, photo: np.ndarray, masks: Sequence[np.ndarray], topk: int = 5
) -> list[list[dict[str, Any]]]:
    """The ``topk`` classes with probabilities for each mask of one photo, all masks in one batch."""
    batch = prepare_regions(photo, masks, timm.data.resolve_data_config({}, model=model))
    device = next(model.parameters()).device
    with torch.inference_mode():  # the trunk before the first merge point runs once for all masks
        logits = model.forward_regions(batch[0, :3].to(device), batch[:, 3].to(device))
        probabilities = logits.softmax(dim=-1).cpu()
    names = label_names(model)
    top = probabilities.topk(min(topk, model.num_classes), dim=-1)
    return [
        [dict(label=names[int(i)], index=int(i), probability=float(p)) for p, i in zip(ps, ids, strict=True)]
        for ps, ids in zip(top.values, top.indices, strict=True)
    ]


def draw_predictions(
    photo: np.ndarray, masks: Sequence[np.ndarray], predictions: list[list[dict[str, Any]]], path: str | os.PathLike
) -> None:
    """Save the photo with each region outlined and labelled with its best class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = photo.shape[:2]
    figure = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    axis = figure.add_axes((0, 0, 1, 1))
    axis.imshow(photo)
    colours = plt.get_cmap("tab10")
    for number, (mask, prediction) in enumerate(zip(masks, predictions, strict=True)):
        colour = colours(number % 10)
        axis.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=2)
        ys, xs = np.nonzero(mask)
        best = prediction[0]
        axis.text(
            xs.mean(),
            ys.min(),
            f"{number + 1}: {best['label']} {best['probability']:.0%}",
            color="white",
            fontsize=10,
            ha="center",
            va="bottom",
            bbox=dict(facecolor=colour, alpha=0.8, pad=2),
        )
    axis.axis("off")
    figure.savefig(path)
    plt.close(figure)
