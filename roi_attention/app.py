"""A browser app (Gradio): classify the regions of a photo that a person paints or uploads as masks.

``roi-attention app`` serves it; ``space/app.py`` is the same app as a Hugging Face Space. Needs the ``app``
extra (``pip install 'roi-attention[app]'``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .hub.load import load_model
from .models import RoiAttentionNet
from .predict import InputFileError, predict_regions, read_mask, read_photo, render_predictions

DEMO_MODEL = Path("runs/demo/training/model")  # where `make demo` leaves its model
NO_MODEL = (
    "**No model to run.** `make demo` trains one into `runs/demo` (about 5 minutes on 2 CPU cores) and the app "
    "finds it there; or start the app with a model: `roi-attention app --model NAME_OR_FOLDER_OR_HUB_ID` (a "
    "registered name such as `roi_tf_efficientnet_lite0_add_l1`, a saved model folder, or `hf-hub:ORG/NAME`)."
)
# Brush colours: each colour painted is one region (as is each layer).
BRUSH_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")
TOPK = 5
CONCURRENCY = 4  # requests served at once, sharing the models


def find_default_model(demo_model: Path = DEMO_MODEL) -> str | None:
    """The model ``make demo`` trained, if it is there."""
    return str(demo_model) if (demo_model / "model.safetensors").is_file() else None


def load_app_models(specs: Sequence[str] | None = None) -> tuple[dict[str, RoiAttentionNet], str | None]:
    """The models to serve, by spec (every form ``predict --model`` takes), and a message for the page when
    there is none: with no ``specs``, the model ``make demo`` trained, if any."""
    if not specs:
        found = find_default_model()
        if found is None:
            return {}, NO_MODEL
        specs = [found]
    return {spec: load_model(spec) for spec in specs}, None


def painted_regions(editor: dict[str, Any] | None, size: tuple[int, int]) -> list[np.ndarray]:
    """One ``(H,W)`` bool mask per brush colour per layer of an ImageEditor value, at the photo's ``size``."""
    palette = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in BRUSH_COLOURS], dtype=np.int32)
    regions = []
    for layer in (editor or {}).get("layers") or []:
        layer = _as_array(layer)
        if layer is None or layer.ndim != 3 or layer.shape[2] != 4:
            continue
        painted = layer[..., 3] > 0
        if not painted.any():
            continue
        if layer.shape[:2] != tuple(size):
            painted = np.asarray(Image.fromarray(painted).resize(size[::-1], Image.Resampling.NEAREST))
            layer = np.asarray(Image.fromarray(layer).resize(size[::-1], Image.Resampling.NEAREST))
        # Anti-aliased stroke edges blend colours: each painted pixel goes to the nearest brush colour.
        distances = ((layer[..., None, :3].astype(np.int32) - palette) ** 2).sum(axis=-1)
        nearest = distances.argmin(axis=-1)
        for colour in range(len(palette)):
            region = painted & (nearest == colour)
            if region.sum() >= max(4, 0.02 * painted.sum()):  # not a stray edge pixel of another colour
                regions.append(region)
    return regions


def _as_array(image: Any) -> np.ndarray | None:
    if image is None:
        return None
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            return np.asarray(opened.convert("RGBA"))
    return np.asarray(image)


def _photo(editor: dict[str, Any] | None) -> np.ndarray:
    background = (editor or {}).get("background")
    if background is None:
        raise InputFileError("no photo: upload a photo (or pick an example), then paint the region on it")
    if isinstance(background, (str, os.PathLike)):
        return read_photo(background)
    array = np.asarray(background)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array[..., :3]).astype(np.uint8)


def _mask_paths(files: Any) -> list[str]:
    if not files:
        return []
    files = files if isinstance(files, list) else [files]
    return [f if isinstance(f, str) else getattr(f, "name", None) or f["path"] for f in files]


def classify(
    models: dict[str, RoiAttentionNet], editor: dict[str, Any] | None, mask_files: Any, chosen: Sequence[str] | None
) -> tuple[Image.Image, str, list[dict[str, Any]]]:
    """The page's answer: the photo with its regions numbered, a table of the top-5 per region and model with
    the mask probes, and the same as data. Raises ``InputFileError`` for input the page should explain."""
    if not models:
        raise InputFileError("no model is loaded: " + NO_MODEL.replace("**", ""))
    chosen = [name for name in (chosen or []) if name in models] or list(models)[:1]
    photo = _photo(editor)
    size = photo.shape[:2]
    masks = painted_regions(editor, size)
    masks += [read_mask(path, size) for path in _mask_paths(mask_files)]
    if not masks:
        raise InputFileError(
            "no region: paint over the region with the brush (one colour or one layer per region), "
            "or upload a mask file (PNG, COCO RLE or polygon JSON) of the photo's size"
        )
    probes = [np.zeros(size, bool), np.ones(size, bool)]  # what the model says without the mask's guidance
    answers = []
    for name in chosen:
        model = models[name]
        predictions = predict_regions(model, photo, [*masks, *probes], topk=model.num_classes)
        regions, (empty, whole) = predictions[: len(masks)], predictions[len(masks) :]
        for number, ranked in enumerate(regions, start=1):
            best = ranked[0]["label"]
            answers.append(
                dict(
                    model=name,
                    region=number,
                    pixels=int(masks[number - 1].sum()),
                    top=ranked[:TOPK],
                    empty_mask=_probability(empty, best),
                    whole_photo=_probability(whole, best),
                    empty_mask_top=empty[0],
                    whole_photo_top=whole[0],
                )
            )
    first = [a["top"] for a in answers if a["model"] == chosen[0]]
    return render_predictions(photo, masks, first), answers_markdown(answers, chosen), answers


def _probability(ranked: list[dict[str, Any]], label: str) -> float:
    return next(p["probability"] for p in ranked if p["label"] == label)


def answers_markdown(answers: list[dict[str, Any]], models: Sequence[str]) -> str:
    """One table per region, a column per model: the top-5 and the mask probes."""
    parts = []
    for region in sorted({a["region"] for a in answers}):
        rows = {a["model"]: a for a in answers if a["region"] == region}
        header = "| | " + " | ".join(f"`{m}`" for m in models) + " |\n|---|" + "---|" * len(models)
        lines = [f"**Region {region}** ({rows[models[0]]['pixels']} pixels)\n", header]
        for rank in range(TOPK):
            cells = [rows[m]["top"][rank] if rank < len(rows[m]["top"]) else None for m in models]
            text = [
                ("**{label}** {probability:.1%}" if rank == 0 else "{label} {probability:.1%}").format(**c) if c else ""
                for c in cells
            ]
            lines.append(f"| {rank + 1} | " + " | ".join(text) + " |")
        lines.append(
            "| empty mask | "
            + " | ".join(f"{rows[m]['empty_mask']:.1%} (says {rows[m]['empty_mask_top']['label']})" for m in models)
            + " |"
        )
        lines.append(
            "| whole photo as mask | "
            + " | ".join(f"{rows[m]['whole_photo']:.1%} (says {rows[m]['whole_photo_top']['label']})" for m in models)
            + " |"
        )
        parts.append("\n".join(lines))
    note = (
        "*Mask probes*: the probability of the region's best label when the same photo is given an empty mask or "
        "the whole photo as the mask. Far below the region's own: the model looks at the region."
    )
    return "\n\n".join([*parts, note])


def example_inputs(folder: Path) -> list[list[Any]]:
    """Examples the app can offer offline: a validation scene of ``make demo`` with its regions, and
    scikit-image's photos (``coffee`` with its cup and spoon outlined by hand)."""
    from .examples import COFFEE_REGIONS, polygon_mask

    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    scene = DEMO_MODEL.parents[1] / "example" / "scene.png"
    if scene.is_file():
        examples.append([str(scene), sorted(str(p) for p in scene.parent.glob("region_*.png"))])
    try:
        from skimage import data
    except ImportError:
        return examples
    coffee = data.coffee()
    Image.fromarray(coffee).save(folder / "coffee.png")
    masks = []
    for name, polygon in COFFEE_REGIONS.items():
        mask = polygon_mask(polygon, (coffee.shape[1], coffee.shape[0]))
        Image.fromarray(mask * 255).save(folder / f"coffee_{name}.png")
        masks.append(str(folder / f"coffee_{name}.png"))
    examples.append([str(folder / "coffee.png"), masks])
    for name in ("chelsea", "astronaut", "rocket"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
        examples.append([str(folder / f"{name}.png"), None])
    return examples


def build_app(models: dict[str, RoiAttentionNet], message: str | None = None, examples_dir: Path | None = None):
    """The Gradio app serving ``models`` (shared by all requests); ``message`` is shown at the top."""
    import gradio as gr

    def run(editor, mask_files, chosen):
        try:
            return classify(models, editor, mask_files, chosen)
        except (InputFileError, ValueError) as error:
            raise gr.Error(str(error), print_exception=False) from error

    names = list(models)
    with gr.Blocks(title="roi-attention: what is in this region?") as app:
        gr.Markdown(
            "# What is in this region?\n"
            "Upload a photo (or pick an example), paint the region with the brush (one colour or one layer per "
            "region) or upload mask files, and classify. The model sees the whole photo and names what is inside "
            "each region ([Eppel, arXiv 1812.00291](https://arxiv.org/abs/1812.00291))."
        )
        if message:
            gr.Markdown(message, elem_id="message")
        with gr.Row():
            with gr.Column():
                editor = gr.ImageEditor(
                    label="photo: paint the regions",
                    type="numpy",
                    image_mode="RGBA",
                    format="png",
                    brush=gr.Brush(colors=list(BRUSH_COLOURS), default_color=BRUSH_COLOURS[0], color_mode="fixed"),
                    elem_id="photo",
                )
                mask_files = gr.File(
                    label="or mask files (PNG, COCO RLE or polygon JSON), one region each",
                    file_count="multiple",
                    file_types=[".png", ".json", ".jpg", ".bmp", ".tif", ".tiff"],
                    elem_id="masks",
                )
                chosen = gr.Dropdown(
                    names,
                    value=names[:1],
                    multiselect=True,
                    label="models (several: answers side by side)",
                    visible=len(names) > 1,
                    elem_id="models",
                )
                submit = gr.Button("Classify the regions", variant="primary", interactive=bool(models), elem_id="go")
            with gr.Column():
                outlined = gr.Image(label="regions, numbered", type="pil", format="png", elem_id="outlined")
                table = gr.Markdown(elem_id="answers")
                answers = gr.JSON(label="answers as data", visible=False)
        folder = examples_dir or Path(tempfile.mkdtemp(prefix="roi-attention-app-"))
        gr.Examples(example_inputs(folder), inputs=[editor, mask_files], label="examples")
        submit.click(run, [editor, mask_files, chosen], [outlined, table, answers], api_name="classify")
    return app.queue(default_concurrency_limit=CONCURRENCY)


def launch(specs: Sequence[str] | None = None, host: str = "127.0.0.1", port: int | None = None) -> None:
    """Serve the app until interrupted."""
    models, message = load_app_models(specs)
    build_app(models, message).launch(server_name=host, server_port=port, show_error=True)
