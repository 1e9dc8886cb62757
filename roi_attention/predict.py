"""Classifying regions of a user's photo: reading photos and masks in the forms people have them."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from .data.build import BuildReport
from .data.inputs import InputFileError, decode_segmentation, inside_folder, read_mask, read_photo, segmentation_rle
from .data.transforms import prepare_regions
from .files import write_whole
from .hub.load import label_names
from .serving import RegionRunner, as_runner

__all__ = [
    "InputFileError",
    "decode_segmentation",
    "draw_predictions",
    "predict_coco_annotations",
    "predict_regions",
    "read_mask",
    "read_photo",
    "render_predictions",
]

# The masks of one photo are prepared and classified this many at a time, so that memory does not grow with the
# number of regions (forward_regions groups them further as the model chooses).
REGIONS_PER_GROUP = 32


def predict_regions(
    model: torch.nn.Module | RegionRunner, photo: np.ndarray, masks: Iterable[np.ndarray], topk: int = 5
) -> list[list[dict[str, Any]]]:
    """The ``topk`` classes with probabilities for each mask of one photo, from a model or a ``RegionRunner``
    (another precision or runtime). The masks (any iterable, so they can be decoded as they are needed) go to
    ``forward_regions`` ``REGIONS_PER_GROUP`` at a time."""
    runner = as_runner(model)
    data_config = timm.data.resolve_data_config({}, model=runner.model)
    names = label_names(runner.model)
    masks = iter(masks)
    results = []
    while group := list(itertools.islice(masks, REGIONS_PER_GROUP)):
        batch = prepare_regions(photo, group, data_config).to(runner.device)
        # the trunk before the first merge point runs once per group
        probabilities = runner.forward_regions(batch[0, :3], batch[:, 3]).softmax(dim=-1).cpu()
        top = probabilities.topk(min(topk, runner.model.num_classes), dim=-1)
        results += [
            [dict(label=names[int(i)], index=int(i), probability=float(p)) for p, i in zip(ps, ids, strict=True)]
            for ps, ids in zip(top.values, top.indices, strict=True)
        ]
    if not results:
        raise InputFileError("no mask to classify")
    return results


DISPLAY_LONG_SIDE = 800  # pixels of the photo's long side in a rendered picture
MIN_PICTURE_WIDTH = 560  # a tall photo's picture is widened to this, so that the legend below it has room
# The legend below the photo: per region a row of the best class and a line of the next ones. Font sizes in
# pixels of the picture: a page that shows it at 600 pixels wide still shows them at 15 and 13 pixels.
LEGEND_FONT_PX = (20, 17)
LEGEND_ROW_HEIGHT = 60
LEGEND_MARGIN = 16


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


def picture_size(photo_size: tuple[int, int], regions: int) -> tuple[int, int]:
    """(width, height) of ``render_predictions``' picture for a photo of ``photo_size`` = (H, W)."""
    height, width = photo_size
    scale = DISPLAY_LONG_SIDE / max(height, width)
    shown = (max(1, round(width * scale)), max(1, round(height * scale)))
    return max(shown[0], MIN_PICTURE_WIDTH), shown[1] + 2 * LEGEND_MARGIN + LEGEND_ROW_HEIGHT * regions


def render_predictions(
    photo: np.ndarray,
    masks: Sequence[np.ndarray],
    predictions: list[list[dict[str, Any]]],
    legend_topk: int = 3,
) -> Image.Image:
    """The photo scaled to a readable size (long side ``DISPLAY_LONG_SIDE``), each region outlined in its own
    colour and numbered at its inside, and a legend below it with each number's best ``legend_topk`` classes
    (names too long for the picture's width end in an ellipsis; the probabilities always show)."""
    from matplotlib import patheffects
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height, width = photo.shape[:2]
    scale = DISPLAY_LONG_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    total_width, total_height = picture_size((height, width), len(masks))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS  # small photos stay sharp
    shown = np.asarray(Image.fromarray(photo).resize(size, resample))
    shown_masks = [
        np.asarray(Image.fromarray(np.asarray(m) != 0).resize(size, Image.Resampling.NEAREST)) for m in masks
    ]
    colours = region_colours(len(masks))
    # Not pyplot: no global state (the app renders in several threads) and the caller's backend stays as it is.
    figure = Figure(figsize=(total_width / 100, total_height / 100), dpi=100, facecolor="white")
    canvas = FigureCanvasAgg(figure)
    left = (total_width - size[0]) / 2 / total_width
    photo_axis = figure.add_axes((left, 1 - size[1] / total_height, size[0] / total_width, size[1] / total_height))
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
    legend_height = total_height - size[1]
    legend = figure.add_axes((0, 0, 1, legend_height / total_height))
    legend.set_axis_off()
    legend.set_xlim(0, total_width)
    legend.set_ylim(legend_height, 0)
    renderer = canvas.get_renderer()
    points = [px * 72 / figure.dpi for px in LEGEND_FONT_PX]
    for row, (prediction, colour) in enumerate(zip(predictions, colours, strict=True)):
        top = LEGEND_MARGIN + row * LEGEND_ROW_HEIGHT
        legend.text(
            20,
            top + 16,
            str(row + 1),
            color="white",
            fontsize=points[1],
            fontweight="bold",
            ha="center",
            va="center",
            bbox=dict(boxstyle="circle,pad=0.25", facecolor=colour, edgecolor="none"),
        )
        guesses = prediction[:legend_topk]
        best = [(guesses[0]["label"], f"  {guesses[0]['probability']:.0%}")] if guesses else []
        others = [(g["label"], f" {g['probability']:.0%}") for g in guesses[1:]]
        _fitted_text(legend, renderer, 44, top + 16, best, total_width - 12, points[0], "bold", "black")
        _fitted_text(legend, renderer, 44, top + 42, others, total_width - 12, points[1], "normal", "dimgray")
    canvas.draw()
    picture = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    # A figure is a web of reference cycles that only the cyclic collector frees, whenever it next runs: cleared
    # here, its images and contours go now (the app grew by 0.4 GB a 16 Mpx request without it).
    figure.clear()
    return picture


def _fitted_text(axis, renderer, x, y, parts, right, size, weight, colour) -> None:
    """``parts`` ((name, suffix), ...) as one line from ``x`` that ends before ``right`` (pixels): the longest
    name is shortened with an ellipsis until it does; the suffixes (probabilities) stay whole."""
    if not parts:
        return
    names = [name for name, _ in parts]
    text = axis.text(x, y, "", va="center", fontsize=size, fontweight=weight, color=colour)
    while True:
        text.set_text(" \u00b7 ".join(f"{name}{suffix}" for name, (_, suffix) in zip(names, parts, strict=True)))
        if text.get_window_extent(renderer).x1 <= right:
            return
        longest = max(range(len(names)), key=lambda i: len(names[i]))
        if len(names[longest]) <= 2:
            return
        names[longest] = names[longest][: max(1, len(names[longest].rstrip("\u2026")) - 3)].rstrip() + "\u2026"


def draw_predictions(
    photo: np.ndarray, masks: Sequence[np.ndarray], predictions: list[list[dict[str, Any]]], path: str | os.PathLike
) -> None:
    """Save ``render_predictions`` of the photo, its regions and their predictions as an image file."""
    render_predictions(photo, masks, predictions).save(path)


def predict_coco_annotations(
    model: torch.nn.Module | RegionRunner,
    annotations: str | os.PathLike,
    images_dir: str | os.PathLike,
    out: str | os.PathLike,
    topk: int = 5,
    progress: bool = True,
    accelerator: Any = None,
    resume: bool = False,
    overwrite: bool = False,
) -> BuildReport:
    """Classify every annotation of a COCO-format file (polygons or RLE; ``category_id`` optional, as a detector's
    or SAM's regions come) and write COCO results JSON to ``out``: per region ``image_id``, ``annotation_id``,
    ``label``, ``category_id`` where the label names one of the file's categories, ``score``, the region's
    ``segmentation`` as compressed RLE (the form ``COCO.loadRes`` and ``COCOeval`` read), and the ``topk`` classes.

    Each photo is read once; each mask is decoded once, when its group of ``REGIONS_PER_GROUP`` is classified, so
    memory does not grow with the regions of a photo. Bad entries (missing, unreadable or too large photo, a
    ``file_name`` outside ``images_dir``, photo of another size, malformed, empty or off-image mask, unknown image
    id) are skipped and counted in the returned report, also written beside ``out`` as ``NAME.report.json``.
    Under ``accelerate launch`` (``accelerator``) the photos are split across the processes and the main one
    writes the results of all, in the file's order; ``out`` appears only when complete.

    Each photo's results are written as they come, one line in a part file per process in the folder
    ``.NAME.parts`` beside ``out`` (flushed to disk): after a crash, a kill or Ctrl-C, ``resume`` classifies only
    the photos not written yet and gives the file an uninterrupted run gives. An existing ``out`` or an earlier
    run's parts are refused unless ``overwrite`` (start again) or ``resume``; ``out`` may not be ``annotations``.
    """
    from accelerate import PartialState

    annotations, images_dir, out = Path(annotations), Path(images_dir), Path(out)
    state = accelerator or PartialState()
    parts = check_results_path(annotations, out, resume, overwrite)
    if not images_dir.is_dir():
        raise InputFileError(f"images folder {images_dir} does not exist")
    state.wait_for_everyone()  # every process has checked before the main one creates the parts folder
    report = BuildReport(split="predictions")
    coco = _read_coco_file(annotations)
    images = {image["id"]: image for image in coco["images"] if isinstance(image, dict) and _hashable(image.get("id"))}
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for entry in coco["annotations"]:
        if not isinstance(entry, dict) or not _hashable(entry.get("image_id")) or entry["image_id"] not in images:
            report.skip("annotation of an image the file does not list", _describe(entry))
        else:
            by_image.setdefault(entry["image_id"], []).append(entry)
    category_ids = {c.get("name"): c.get("id") for c in coco.get("categories") or [] if isinstance(c, dict)}
    if state.is_main_process:
        if overwrite:
            shutil.rmtree(parts, ignore_errors=True)
        parts.mkdir(exist_ok=True)
        for path in parts.glob("part-*.jsonl"):  # a line a kill cut short goes, so that the next one starts clean
            text = path.read_bytes()
            if text and not text.endswith(b"\n"):
                path.write_bytes(text[: text.rfind(b"\n") + 1])
    state.wait_for_everyone()
    done = set(_read_parts(parts)) if resume else set()
    todo = [image_id for image_id in by_image if image_id not in done]
    with state.split_between_processes(todo) as image_ids:
        regions = sum(len(by_image[image_id]) for image_id in image_ids)
        bar = tqdm(total=regions, desc="classifying", unit="region", disable=not progress, position=state.process_index)
        with open(parts / f"part-{state.process_index}.jsonl", "a", encoding="utf-8") as part_file:
            for image_id in image_ids:
                entries, photo_report = by_image[image_id], BuildReport(split="predictions")
                results = _classify_photo(
                    model, images[image_id], entries, images_dir, category_ids, photo_report, topk
                )
                line = dict(image_id=image_id, results=results, report=photo_report.to_dict())
                part_file.write(json.dumps(line) + "\n")
                part_file.flush()
                os.fsync(part_file.fileno())
                bar.update(len(entries))
        bar.close()
    state.wait_for_everyone()  # every process has written its part
    if state.is_main_process:
        written = _read_parts(parts)
        for photo_report in (BuildReport.from_dict(line["report"]) for line in written.values()):
            report.merge(photo_report)
        write_whole(out.with_name(f"{out.stem}.report.json"), json.dumps(report.to_dict(), indent=2))
        write_whole(out, json.dumps([result for image_id in by_image for result in written[image_id]["results"]]))
        shutil.rmtree(parts)
    state.wait_for_everyone()
    return report


def check_results_path(annotations: Path, out: Path, resume: bool, overwrite: bool) -> Path:
    """The parts folder of ``out``, after refusing what would lose an input or an earlier result."""
    parts = out.with_name(f".{out.name}.parts")
    if resume and overwrite:
        raise ValueError("--resume continues an interrupted run, --overwrite starts again: choose one")
    if out.exists() and annotations.exists() and out.resolve() == annotations.resolve():
        raise ValueError(f"--out {out} is the annotations file itself: choose another results file")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: --overwrite to replace it, or choose another --out")
    if parts.exists() and not (resume or overwrite):
        raise FileExistsError(
            f"an interrupted run left its results in {parts}: --resume to continue it, --overwrite to start again"
        )
    if resume and not parts.exists():
        raise FileNotFoundError(f"nothing to resume: no interrupted run's results ({parts}) beside {out}")
    return parts


def _read_parts(parts: Path) -> dict[Any, dict[str, Any]]:
    """The photos written in the part files."""
    written = {}
    for path in sorted(parts.glob("part-*.jsonl")):
        for text in path.read_text(encoding="utf-8").splitlines():
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue
            written[line["image_id"]] = line
    return written


def _classify_photo(
    model: torch.nn.Module | RegionRunner,
    info: dict[str, Any],
    entries: list[dict[str, Any]],
    images_dir: Path,
    category_ids: dict[str, Any],
    report: BuildReport,
    topk: int,
) -> list[dict[str, Any]]:
    """The COCO results of one photo's annotations; what is skipped is counted in ``report``."""
    photo, rles, kept = _photo_regions(info, entries, images_dir, report)
    if not kept:
        return []
    predictions = predict_regions(model, photo, (mask_utils.decode(rle) for rle in rles), topk=topk)
    results = []
    for entry, rle, prediction in zip(kept, rles, predictions, strict=True):
        best = prediction[0]
        result = dict(image_id=info["id"], annotation_id=entry.get("id"), label=best["label"])
        if best["label"] in category_ids:
            result["category_id"] = category_ids[best["label"]]
        segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        results.append(dict(result, score=best["probability"], segmentation=segmentation, topk=prediction))
    report.images_kept += 1
    report.regions_kept += len(kept)
    return results


def _hashable(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


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
) -> tuple[np.ndarray | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """The photo, the checked RLEs of its usable annotations and those annotations; the rest counted in
    ``report``."""
    name = info.get("file_name", str(info["id"]))
    try:
        path = inside_folder(images_dir, name, f"image {info['id']}")
    except InputFileError as error:
        report.skip("file_name outside the images folder", str(error), len(entries))
        return None, [], []
    try:
        photo = read_photo(path, f"photo {name}", as_displayed=False)  # COCO geometry: the stored pixels
    except InputFileError as error:
        report.skip("photo missing, unreadable or too large", str(error), len(entries))
        return None, [], []
    height, width = photo.shape[:2]
    if info.get("height", height) != height or info.get("width", width) != width:
        report.skip("photo size differs from the annotations file", f"{name} is {width}x{height}", len(entries))
        return None, [], []
    rles, kept = [], []
    for entry in entries:
        try:
            rle = segmentation_rle(entry.get("segmentation"), (height, width), _describe(entry))
        except InputFileError as error:
            reason = "mask size differs from the photo" if "RLE of size" in str(error) else "malformed segmentation"
            report.skip(reason, str(error))
            continue
        if mask_utils.area(rle) == 0:
            outside = _polygons_outside(entry["segmentation"], height, width)
            report.skip("mask outside the image" if outside else "empty mask", _describe(entry))
            continue
        rles.append(rle)
        kept.append(entry)
    return photo, rles, kept


def _polygons_outside(segmentation: Any, height: int, width: int) -> bool:
    """Whether (checked) polygons lie wholly off a ``height`` x ``width`` image (an RLE has the image's size)."""
    if not isinstance(segmentation, list):
        return False
    xs = [x for polygon in segmentation for x in polygon[0::2]]
    ys = [y for polygon in segmentation for y in polygon[1::2]]
    return max(xs) < 0 or min(xs) >= width or max(ys) < 0 or min(ys) >= height
