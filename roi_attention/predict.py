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
from tqdm.auto import tqdm

from .data.build import BuildReport, encode_mask
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
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputFileError(f"mask {path} is not valid JSON: {error}") from error
    if isinstance(data, dict) and "segmentation" in data:
        data = data["segmentation"]
    return decode_segmentation(data, size, f"mask {path}")


def decode_segmentation(segmentation: Any, size: tuple[int, int], what: str = "segmentation") -> np.ndarray:
    """The ``(H,W)`` uint8 mask of a COCO segmentation (compressed or uncompressed RLE ``{"size", "counts"}``, or
    polygons ``[[x, y, ...], ...]``) on a photo of ``size`` = (H, W); ``what`` names it in errors."""
    height, width = size
    try:
        if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
            if list(segmentation["size"]) != [height, width]:
                raise InputFileError(
                    f"{what} is an RLE of size {segmentation['size'][1]}x{segmentation['size'][0]} (WxH), "
                    f"the photo {width}x{height}"
                )
            rle = segmentation
            if isinstance(rle["counts"], list):
                rle = mask_utils.frPyObjects(rle, height, width)
            elif isinstance(rle["counts"], str):
                rle = {**rle, "counts": rle["counts"].encode("ascii")}
            return mask_utils.decode(rle)
        if isinstance(segmentation, list) and segmentation and all(isinstance(p, list) for p in segmentation):
            if any(len(p) < 6 or len(p) % 2 for p in segmentation):
                raise InputFileError(f"{what}: each polygon needs at least 3 (x, y) points as a flat list")
            return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)))
    except InputFileError:
        raise
    except (TypeError, ValueError, KeyError) as error:
        raise InputFileError(f"{what} holds malformed RLE or polygons: {error}") from error
    raise InputFileError(
        f"{what}: expected COCO RLE {{'size', 'counts'}}, polygons [[x, y, ...], ...] or an annotation "
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


DISPLAY_LONG_SIDE = 800  # pixels of the photo's long side in a rendered picture
LEGEND_WIDTH = 380


def region_colours(count: int) -> list[tuple[float, float, float]]:
    """``count`` distinct RGB colours (0-1) for region outlines: tab10, then tab20, then evenly spaced hues."""
    import matplotlib

    if count <= 10:
        return [matplotlib.colormaps["tab10"](i)[:3] for i in range(count)]
    if count <= 20:
        return [matplotlib.colormaps["tab20"](i)[:3] for i in range(count)]
    return [matplotlib.colors.hsv_to_rgb((i / count, 0.9, 0.9)) for i in range(count)]


def _label_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the region's pixel farthest from its border: inside the region even when it is not convex."""
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(depth.argmax()), depth.shape)
    return float(x), float(y)


def render_predictions(
    photo: np.ndarray,
    masks: Sequence[np.ndarray],
    predictions: list[list[dict[str, Any]]],
    legend_topk: int = 3,
) -> Image.Image:
    """The photo scaled to a readable size (long side ``DISPLAY_LONG_SIDE``), each region outlined in its own
    colour and numbered at its inside, and a legend beside it with each number's best ``legend_topk`` classes."""
    from matplotlib import patheffects
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height, width = photo.shape[:2]
    scale = DISPLAY_LONG_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS  # small photos stay sharp
    shown = np.asarray(Image.fromarray(photo).resize(size, resample))
    shown_masks = [
        np.asarray(Image.fromarray(np.asarray(m) != 0).resize(size, Image.Resampling.NEAREST)) for m in masks
    ]
    colours = region_colours(len(masks))
    line_height = 22 * (legend_topk + 1)
    figure_height = max(size[1], 60 + line_height * len(masks))
    # Not pyplot: no global state (the app renders in several threads) and the caller's backend stays as it is.
    figure = Figure(figsize=((size[0] + LEGEND_WIDTH) / 100, figure_height / 100), dpi=100)
    canvas = FigureCanvasAgg(figure)
    total = size[0] + LEGEND_WIDTH
    photo_axis = figure.add_axes((0, 1 - size[1] / figure_height, size[0] / total, size[1] / figure_height))
    photo_axis.imshow(shown, interpolation="nearest")
    photo_axis.set_axis_off()
    for number, (mask, colour) in enumerate(zip(shown_masks, colours, strict=True), start=1):
        if not mask.any():
            continue
        outline = photo_axis.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=2.5)
        outline.set_path_effects([patheffects.withStroke(linewidth=5, foreground="white")])  # visible on any photo
        x, y = _label_point(mask)
        photo_axis.text(
            x,
            y,
            str(number),
            color="white",
            fontsize=13,
            fontweight="bold",
            ha="center",
            va="center",
            bbox=dict(boxstyle="circle,pad=0.25", facecolor=colour, edgecolor="white", linewidth=1.5),
        )
    legend = figure.add_axes((size[0] / total, 0, LEGEND_WIDTH / total, 1))
    legend.set_axis_off()
    legend.set_xlim(0, LEGEND_WIDTH)
    legend.set_ylim(figure_height, 0)
    for row, (prediction, colour) in enumerate(zip(predictions, colours, strict=True)):
        top = 20 + row * line_height
        legend.text(
            16,
            top + 10,
            str(row + 1),
            color="white",
            fontsize=12,
            fontweight="bold",
            ha="center",
            va="center",
            bbox=dict(boxstyle="circle,pad=0.25", facecolor=colour, edgecolor="none"),
        )
        for rank, guess in enumerate(prediction[:legend_topk]):
            legend.text(
                36,
                top + 10 + 22 * rank,
                f"{guess['label']}  {guess['probability']:.0%}",
                va="center",
                fontsize=12 if rank == 0 else 10,
                fontweight="bold" if rank == 0 else "normal",
                color="black" if rank == 0 else "dimgray",
            )
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def draw_predictions(
    photo: np.ndarray, masks: Sequence[np.ndarray], predictions: list[list[dict[str, Any]]], path: str | os.PathLike
) -> None:
    """Save ``render_predictions`` of the photo, its regions and their predictions as an image file."""
    render_predictions(photo, masks, predictions).save(path)


def predict_coco_annotations(
    model: torch.nn.Module,
    annotations: str | os.PathLike,
    images_dir: str | os.PathLike,
    out: str | os.PathLike,
    topk: int = 5,
    progress: bool = True,
) -> BuildReport:
    """Classify every annotation of a COCO-format file (polygons or RLE; ``category_id`` optional, as a detector's
    or SAM's regions come) and write COCO results JSON to ``out``: per region ``image_id``, ``annotation_id``,
    ``label``, ``category_id`` where the label names one of the file's categories, ``score``, the region's
    ``segmentation`` as compressed RLE (the form ``COCO.loadRes`` and ``COCOeval`` read), and the ``topk`` classes.

    Each photo is read once and its regions classified together. Bad entries (missing or unreadable photo, photo
    of another size, malformed, empty or off-image mask, unknown image id) are skipped and counted in the returned
    report, also written beside ``out`` as ``NAME.report.json``; ``out`` appears only when complete.
    """
    annotations, images_dir, out = Path(annotations), Path(images_dir), Path(out)
    if not images_dir.is_dir():
        raise InputFileError(f"images folder {images_dir} does not exist")
    report = BuildReport(split="predictions")
    coco = _read_coco_file(annotations)
    images = {image["id"]: image for image in coco["images"] if isinstance(image, dict) and "id" in image}
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for entry in coco["annotations"]:
        if not isinstance(entry, dict) or entry.get("image_id") not in images:
            report.skip("annotation of an image the file does not list", _describe(entry))
        else:
            by_image.setdefault(entry["image_id"], []).append(entry)
    category_ids = {c.get("name"): c.get("id") for c in coco.get("categories") or [] if isinstance(c, dict)}
    results = []
    for image_id, entries in tqdm(by_image.items(), desc="classifying", unit="photo", disable=not progress):
        photo, masks, kept = _photo_regions(images[image_id], entries, images_dir, report)
        if not kept:
            continue
        predictions = predict_regions(model, photo, masks, topk=topk)
        for entry, mask, prediction in zip(kept, masks, predictions, strict=True):
            best = prediction[0]
            result = dict(image_id=image_id, annotation_id=entry.get("id"), label=best["label"])
            if best["label"] in category_ids:
                result["category_id"] = category_ids[best["label"]]
            results.append(dict(result, score=best["probability"], segmentation=encode_mask(mask), topk=prediction))
        report.images_kept += 1
        report.regions_kept += len(kept)
    _write_whole(out.with_name(f"{out.stem}.report.json"), json.dumps(report.to_dict(), indent=2))
    _write_whole(out, json.dumps(results))
    return report


def _read_coco_file(path: Path) -> dict[str, Any]:
    try:
        coco = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise InputFileError(f"annotations file {path} does not exist") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputFileError(f"annotations file {path} is not valid JSON: {error}") from error
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations")):
        raise InputFileError(
            f"{path} is not a COCO-format file: expected an object with 'images' (id, file_name) and "
            "'annotations' (image_id, segmentation) lists"
        )
    return coco


def _describe(entry: Any) -> str:
    return f"annotation {entry.get('id')}" if isinstance(entry, dict) else repr(entry)[:40]


def _photo_regions(
    info: dict[str, Any], entries: list[dict[str, Any]], images_dir: Path, report: BuildReport
) -> tuple[np.ndarray | None, list[np.ndarray], list[dict[str, Any]]]:
    """The photo, the masks of its usable annotations and those annotations; the rest counted in ``report``."""
    name = str(info.get("file_name", info["id"]))
    try:
        photo = read_photo(images_dir / name)
    except InputFileError as error:
        report.skip("photo missing or unreadable", f"{name} ({error})", len(entries))
        return None, [], []
    height, width = photo.shape[:2]
    if info.get("height", height) != height or info.get("width", width) != width:
        report.skip("photo size differs from the annotations file", f"{name} is {width}x{height}", len(entries))
        return None, [], []
    masks, kept = [], []
    for entry in entries:
        try:
            mask = decode_segmentation(entry.get("segmentation"), (height, width), _describe(entry))
        except InputFileError as error:
            reason = "mask size differs from the photo" if "RLE of size" in str(error) else "malformed segmentation"
            report.skip(reason, str(error))
            continue
        if not mask.any():
            outside = _polygons_outside(entry["segmentation"], height, width)
            report.skip("mask outside the image" if outside else "empty mask", _describe(entry))
            continue
        masks.append(mask)
        kept.append(entry)
    return photo, masks, kept


def _polygons_outside(segmentation: Any, height: int, width: int) -> bool:
    """Whether polygons lie wholly off a ``height`` x ``width`` image (an RLE always has the image's size)."""
    if not isinstance(segmentation, list):
        return False
    xs = [x for polygon in segmentation for x in polygon[0::2]]
    ys = [y for polygon in segmentation for y in polygon[1::2]]
    return max(xs) < 0 or min(xs) >= width or max(ys) < 0 or min(ys) >= height


def _write_whole(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that the file appears complete or not at all."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)
