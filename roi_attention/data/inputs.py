"""What users and other programs hand us (photos, masks, COCO geometry, file names), checked before any decoder
sees it: every reader of the project (``predict``, the app, the dataset builders, eval) goes through here.

A photo or mask image is refused above a pixel limit (``ROI_ATTENTION_MAX_PIXELS``, default 64 Mpx) before it is
decoded. Polygons must be finite, of at least 3 points, near the photo and of bounded length; RLE counts must be
non-negative integers summing to exactly height x width. pycocotools' C decoders trust their input: a NaN
polygon crashes them, a short RLE reads uninitialised memory, a long one writes past its buffer.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools import mask as mask_utils

DEFAULT_MAX_PIXELS = 64_000_000
MAX_PIXELS_VARIABLE = "ROI_ATTENTION_MAX_PIXELS"
# A polygon's cost to pycocotools is its length: it allocates about 40 bytes per pixel of outline. Outlines up to
# this many times the photo's half-perimeter (h + w) are accepted, far beyond any real region's.
MAX_OUTLINE_FACTOR = 256
# pycocotools merges a segmentation's polygons one by one, in time quadratic in their number (measured: 10k
# polygons 0.5 s, 40k 7.3 s, holding the GIL). Real annotations have a few; these bound one segmentation's cost.
MAX_POLYGONS = 1_000
MAX_VERTICES = 200_000

Source = str | os.PathLike | IO[bytes]
# The formats photos and masks are opened as (PIL knows more: EPS, for one, hands the file to Ghostscript).
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF", "PPM")
# Masks lose nothing: JPEG noise (and lossy WebP's) would join the background to the region.
LOSSY_FORMATS = ("JPEG", "MPO")  # MPO: a JPEG file with more frames


class InputFileError(ValueError):
    """A photo, mask or annotation cannot be used; the message says why."""


def max_pixels(limit: int | None = None) -> int:
    """The pixel limit for photos and masks: ``limit``, else ``ROI_ATTENTION_MAX_PIXELS``, else 64 Mpx."""
    if limit is not None:
        return int(limit)
    value = os.environ.get(MAX_PIXELS_VARIABLE)
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        return int(value)
    except ValueError as error:
        raise InputFileError(f"{MAX_PIXELS_VARIABLE}={value!r} is not a number of pixels") from error


@contextmanager
def open_image(source: Source, what: str, limit: int | None = None) -> Iterator[Image.Image]:
    """The decoded image of ``source`` (one of ``PHOTO_FORMATS``), refused (``InputFileError``) when it is not an
    image or has more pixels than ``max_pixels(limit)``: the size is read from the header, before anything is
    decoded."""
    limit = max_pixels(limit)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below is ours
            image = Image.open(source, formats=PHOTO_FORMATS)
    except Image.DecompressionBombError as error:
        raise InputFileError(f"{what} is too large to decode safely ({error})") from error
    except FileNotFoundError as error:
        raise InputFileError(f"{what} does not exist") from error
    except UnidentifiedImageError as error:  # its message holds the file's path, which may be a server's
        raise InputFileError(f"{what} is not an image file PIL can read (PNG, JPEG, TIFF, BMP, WebP, ...)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise InputFileError(f"{what} cannot be read as an image: {error}") from error
    with image:
        width, height = image.size
        if width * height > limit:
            raise InputFileError(
                f"{what} is {width}x{height}, {width * height:,} pixels: more than the {limit:,} accepted "
                f"(set {MAX_PIXELS_VARIABLE} to change the limit)"
            )
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise InputFileError(f"{what} cannot be read as an image: {error}") from error
        yield image


def read_photo(
    source: Source, what: str | None = None, limit: int | None = None, as_displayed: bool = True
) -> np.ndarray:
    """An ``(H,W,3)`` uint8 RGB photo: greyscale, RGBA (alpha dropped), palette and 16-bit files converted.
    ``as_displayed``: with its EXIF rotation applied, as a viewer shows it and a person draws masks on it
    (``predict --image``, the app); without, the stored pixels, which COCO-format geometry refers to (COCO
    ignores EXIF: ``predict --coco-annotations``, ``build-dataset``, ``eval``). ``what`` names it in errors."""
    what = what or f"photo {source}"
    with open_image(source, what, limit) as image:
        if as_displayed:
            image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return np.repeat(_eight_bit(image)[..., None], 3, axis=2)
        return np.array(image.convert("RGB"))  # a writable copy


def _eight_bit(image: Image.Image) -> np.ndarray:
    """A 16-bit or integer greyscale image as 0-255 levels."""
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
    return np.clip(np.round(values / top * 255), 0, 255).astype(np.uint8)


def read_mask(
    path: str | os.PathLike, size: tuple[int, int], what: str | None = None, limit: int | None = None
) -> np.ndarray:
    """A ``(H,W)`` bool mask for a photo of ``size`` = (H, W) as displayed, from a mask image (``mask_of_image``:
    PNG, TIFF, BMP, GIF or lossless WebP, its EXIF rotation applied as to the photo) or a JSON with COCO RLE
    (``{"size", "counts"}``), polygons (``[[x, y, ...], ...]``) or a COCO annotation (``{"segmentation": ...}``).
    ``what`` names it in errors (default: ``mask PATH``); ``limit``: the pixel limit of a mask image."""
    path = Path(path)
    what = what or f"mask {path}"
    if not path.is_file():
        raise InputFileError(f"{what} does not exist")
    if path.suffix.lower() == ".json":
        # The longest JSON a mask of this photo needs: uncompressed RLE of one-pixel runs, "1," a pixel.
        if path.stat().st_size > 4 * size[0] * size[1] + 4096:
            raise InputFileError(f"{what} is larger than any mask of a {size[1]}x{size[0]} photo")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            raise InputFileError(f"{what} is not valid JSON: {error}") from error
        if isinstance(data, dict) and "segmentation" in data:
            data = data["segmentation"]
        mask = decode_segmentation(data, size, what)
    else:
        with open_image(path, what, limit) as image:
            mask = mask_of_image(image, what, path)
    if mask.shape != tuple(size):
        raise InputFileError(
            f"{what} is {mask.shape[1]}x{mask.shape[0]} (WxH), the photo {size[1]}x{size[0]}: "
            "draw the mask on the photo as displayed (after EXIF rotation), at its size"
        )
    if not mask.any():
        raise InputFileError(f"{what} is empty: no pixel marks the region")
    return mask


def mask_of_image(image: Image.Image, what: str = "mask", path: str | os.PathLike | None = None) -> np.ndarray:
    """The region a mask image shows, as a ``(H,W)`` bool array (EXIF rotation applied), by one rule: a palette
    image is its colours (not its indices); where the alpha channel varies, it marks the region (a painted layer:
    alpha >= 128); otherwise a pixel is in the region when its brightest channel is at least 128 (a white region
    on black, an RGBA mask with an opaque background, a coloured region), and a 0/1 label image's 1s are. Lossy
    formats are refused."""
    if image.format in LOSSY_FORMATS or (image.format == "WEBP" and not _lossless_webp(path)):
        raise InputFileError(
            f"{what} is a lossy {image.format} file: its compression noise would join the background to the region; "
            "save masks as PNG (or lossless WebP, TIFF, BMP)"
        )
    image = ImageOps.exif_transpose(image)  # as the photo is displayed
    if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min() != alpha.max():
            return alpha >= 128
        image = image.convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        levels = _eight_bit(image)
    elif image.mode == "1":
        levels = np.asarray(image.convert("L"))
    else:
        levels = np.asarray(image)
        levels = levels.max(axis=2) if levels.ndim == 3 else levels
    return levels == 1 if levels.max() <= 1 else levels >= 128


def _lossless_webp(path: str | os.PathLike | None) -> bool:
    """Whether a WebP file holds lossless (VP8L) image data only."""
    if path is None:
        return False
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    return b"VP8L" in head and b"VP8 " not in head


def read_author_samples(folder: str | os.PathLike) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """The photos and masks of a folder in the paper author's test layout: one subfolder per photo, with
    ``Image.png`` and its masks ``InputMask*.png`` (as ``shared/fixtures/coco_example`` holds them)."""
    samples = []
    for sample in sorted(path for path in Path(folder).iterdir() if path.is_dir()):
        photo = read_photo(sample / "Image.png")
        masks = [read_mask(path, photo.shape[:2]) for path in sorted(sample.glob("InputMask*.png"))]
        samples.append((photo, masks))
    return samples


def segmentation_rle(segmentation: Any, size: tuple[int, int], what: str = "segmentation") -> dict[str, Any]:
    """The compressed COCO RLE (``counts`` as bytes) of a segmentation on a photo of ``size`` = (H, W):
    compressed or uncompressed RLE ``{"size", "counts"}``, or polygons ``[[x, y, ...], ...]``. Anything a
    decoder could not take safely raises ``InputFileError``; ``what`` names it."""
    height, width = size
    if height * width > max_pixels():
        raise InputFileError(f"{what} is for a {width}x{height} photo: more than the {max_pixels():,} pixels accepted")
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        _check_rle_size(segmentation["size"], height, width, what)
        counts = segmentation["counts"]
        if isinstance(counts, list):
            _check_counts(counts, height * width, what)
            return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        if isinstance(counts, str):
            try:
                counts = counts.encode("ascii")
            except UnicodeEncodeError as error:
                raise InputFileError(f"{what}: compressed RLE counts must be ASCII") from error
        if not isinstance(counts, bytes):
            raise InputFileError(f"{what}: RLE counts must be a list of integers or a compressed string")
        _check_counts(compressed_counts(counts, what), height * width, what)
        return {"size": [height, width], "counts": counts}
    if isinstance(segmentation, list) and segmentation and all(isinstance(p, list) for p in segmentation):
        _check_polygons(segmentation, height, width, what)
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    raise InputFileError(
        f"{what}: expected COCO RLE {{'size', 'counts'}}, polygons [[x, y, ...], ...] or an annotation "
        "with 'segmentation'"
    )


def decode_segmentation(segmentation: Any, size: tuple[int, int], what: str = "segmentation") -> np.ndarray:
    """The ``(H,W)`` uint8 0/1 mask of a segmentation (see ``segmentation_rle``)."""
    return mask_utils.decode(segmentation_rle(segmentation, size, what))


def compressed_counts(counts: bytes, what: str = "RLE") -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' format: 5 bits a character from '0',
    0x20 continues a number, 0x10 signs its last character, runs after the second stored as differences)."""
    runs: list[int] = []
    number = shift = 0
    for character in counts:
        code = character - 48
        if not 0 <= code < 64:
            raise InputFileError(f"{what}: {chr(character)!r} cannot appear in compressed RLE counts")
        number |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            if shift > 35:
                raise InputFileError(f"{what}: a run length of compressed RLE counts is too long")
            continue
        if code & 0x10:
            number -= 1 << shift
        if len(runs) > 2:
            number += runs[-2]
        runs.append(number)
        number = shift = 0
    if shift:
        raise InputFileError(f"{what}: compressed RLE counts end inside a number")
    return runs


def _check_rle_size(rle_size: Any, height: int, width: int, what: str) -> None:
    if not (isinstance(rle_size, list | tuple) and len(rle_size) == 2 and all(_is_int(s) for s in rle_size)):
        raise InputFileError(f"{what}: RLE size must be [height, width], got {str(rle_size)[:40]}")
    if [int(s) for s in rle_size] != [height, width]:
        raise InputFileError(f"{what} is an RLE of size {rle_size[1]}x{rle_size[0]} (WxH), the photo {width}x{height}")


def _check_counts(counts: list[Any], pixels: int, what: str) -> None:
    if not all(_is_int(c) and c >= 0 for c in counts):
        raise InputFileError(f"{what}: RLE counts must be non-negative integers")
    total = sum(counts)
    if total != pixels:
        raise InputFileError(f"{what}: RLE counts sum to {total}, not height x width = {pixels}")


def _check_polygons(polygons: list[list[Any]], height: int, width: int, what: str) -> None:
    if len(polygons) > MAX_POLYGONS:
        raise InputFileError(f"{what}: {len(polygons):,} polygons, more than the {MAX_POLYGONS:,} one region may have")
    vertices = sum(len(polygon) for polygon in polygons) // 2
    if vertices > MAX_VERTICES:
        raise InputFileError(f"{what}: {vertices:,} polygon points, more than the {MAX_VERTICES:,} one region may have")
    outline = 0.0
    for polygon in polygons:
        if len(polygon) < 6 or len(polygon) % 2:
            raise InputFileError(f"{what}: each polygon needs at least 3 (x, y) points as a flat list")
        if not all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in polygon):
            raise InputFileError(f"{what}: polygon coordinates must be numbers")
        try:
            xs, ys = [float(v) for v in polygon[0::2]], [float(v) for v in polygon[1::2]]
        except OverflowError:
            xs = ys = [math.inf]
        if not all(map(math.isfinite, xs + ys)):
            raise InputFileError(f"{what}: polygon coordinates must be finite numbers")
        if min(xs) < -width or max(xs) > 2 * width or min(ys) < -height or max(ys) > 2 * height:
            raise InputFileError(
                f"{what}: polygon coordinates must lie within a photo's size of the {width}x{height} photo"
            )
        closed = zip(xs, ys, xs[1:] + xs[:1], ys[1:] + ys[:1], strict=True)
        outline += sum(max(abs(x1 - x0), abs(y1 - y0)) + 1 for x0, y0, x1, y1 in closed)
    if outline > MAX_OUTLINE_FACTOR * (height + width):
        raise InputFileError(f"{what}: polygon outlines of {outline:.0f} pixels are too long for the photo")


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def inside_folder(folder: Path, name: Any, what: str) -> Path:
    """``folder / name`` when ``name`` is a relative path that stays inside ``folder`` (symlinks resolved),
    else ``InputFileError`` with one message, whether or not such a file exists."""
    refused = InputFileError(f"{what}: file_name {str(name)[:200]!r} is not a relative path inside the images folder")
    if not isinstance(name, str) or not name or "\x00" in name:
        raise refused
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise refused
    root = Path(os.path.realpath(folder))
    path = Path(os.path.realpath(root / relative))
    if path != root and root not in path.parents:
        raise refused
    return folder / relative
