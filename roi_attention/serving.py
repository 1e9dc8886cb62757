"""Serving an ROI model at a precision (float32, bf16, int8) on a runtime (eager PyTorch, torch.compile, ONNX
Runtime): one ``RegionRunner`` that ``predict``, ``eval`` and the app classify through."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import Tensor, nn

from .models import RoiAttentionNet

__all__ = [
    "CALIBRATION_REGIONS",
    "PRECISIONS",
    "RUNTIMES",
    "RegionGroupGraph",
    "RegionRunner",
    "ServingError",
    "ServingOptions",
    "as_runner",
    "calibration_groups",
    "cpu_has_bf16",
    "prepare_runner",
]

PRECISIONS = ("fp32", "bf16", "int8")
RUNTIMES = ("eager", "compile", "onnxruntime")
# int8 is ONNX Runtime's static quantisation: measured about 2.4x PyTorch's PT2E int8 through the x86 Inductor
# quantizer here (BENCHMARKS.md, "Serving runtimes").
INT8_RUNTIME = "onnxruntime"
# How many regions of a dataset split calibrate int8 by default, spread evenly over the split.
CALIBRATION_REGIONS = 128
# ONNX Runtime takes the masks of a variant that shares little (the trunk-sharing ones go SHARED_TRUNK_GROUP at a
# time) this many per run: per region at least as fast as one a run for roi_resnet50 and the Lite0 add_l1, fp32 and
# int8, at 224x224 on this CPU (benchmarks/serving_runtimes.py prints regions/s by group size).
ONNXRUNTIME_GROUP = 4


class ServingError(ValueError):
    """A precision or runtime this machine, model or input cannot serve."""


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where autocast pays; elsewhere it is emulated."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI (int8 dot products); without it ONNX Runtime's int8 wants 7-bit weights."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


class RegionGroupGraph(nn.Module):
    """``forward(image (1,C,H,W), masks (N,1,H,W)) -> logits (N,classes)``: one photo's masks in one group, the
    graph that ONNX export and ``torch.compile`` take."""

    def __init__(self, model: RoiAttentionNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor, masks: Tensor) -> Tensor:
        return self.model.forward_region_group(image, masks)


def resolve_options(precision: str, runtime: str | None) -> str:
    """The runtime for ``precision`` (int8 defaults to ONNX Runtime); refuses a pair that does not exist."""
    if precision not in PRECISIONS:
        raise ServingError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    runtime = runtime or (INT8_RUNTIME if precision == "int8" else "eager")
    if runtime not in RUNTIMES:
        raise ServingError(f"unknown runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if precision == "int8" and runtime != INT8_RUNTIME:
        raise ServingError(f"int8 runs on ONNX Runtime's static quantisation: use --runtime {INT8_RUNTIME}")
    if precision == "bf16" and runtime == "onnxruntime":
        raise ServingError("bf16 runs on PyTorch (--runtime eager or compile); ONNX Runtime serves fp32 and int8")
    return runtime


class RegionRunner:
    """A model's ``forward_regions`` at a precision on a runtime; made by ``prepare_runner``. It keeps the model
    (its config, classes and data config) and returns float32 logits, as the eager model would."""

    def __init__(
        self, model: RoiAttentionNet, precision: str, runtime: str, session: Any = None, batch_module: Any = None
    ) -> None:
        self.model, self.precision, self.runtime = model, precision, runtime
        self._session = session
        self._compiled_group = torch.compile(RegionGroupGraph(model)) if runtime == "compile" else None
        # What runs a batch of photos: the model as the caller wrapped it (DDP, FSDP, compiled), or compiled here.
        self._batch_module = batch_module or (torch.compile(model) if runtime == "compile" else model)

    def __repr__(self) -> str:
        return f"RegionRunner({self.model.pretrained_cfg.get('architecture')}, {self.precision}, {self.runtime})"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def batches_photos(self) -> bool:
        """Whether a batch of regions of different photos runs as one forward in ``__call__``."""
        return self.runtime != "onnxruntime" and not self.model.shares_trunk

    def group_size(self, count: int, height: int, width: int) -> int:
        """How many of ``count`` masks of one photo go through the runtime together."""
        if self.runtime == "onnxruntime" and not self.model.shares_trunk:
            return min(count, ONNXRUNTIME_GROUP)
        return self.model.regions_chunk_size(count, height, width, self.device)

    def forward_regions(self, image: Tensor, masks: Tensor, group_size: int | None = None) -> Tensor:
        """Logits ``(N, classes)`` of the ``(N,H,W)`` or ``(N,1,H,W)`` masks of one ``(C,H,W)`` photo, like
        ``RoiAttentionNet.forward_regions``; the masks go ``group_size`` at a time (default ``group_size()``)."""
        with torch.inference_mode(), self._autocast():
            if self.runtime == "eager":
                return self.model.forward_regions(image, masks, chunk_size=group_size).float()
            image, masks = self.model.regions_input(image, masks)
            chunk = group_size or self.group_size(masks.shape[0], *image.shape[-2:])
            return torch.cat([self._group(image[:1], group) for group in masks.split(chunk)]).float()

    def __call__(self, pixels: Tensor) -> Tensor:
        """Logits of a packed ``(B,C+1,H,W)`` batch of regions of any photos: one forward where the runner
        batches photos, else each run of consecutive regions of one photo through ``forward_regions``."""
        if self.batches_photos:
            with torch.inference_mode(), self._autocast():
                return self._batch_module(pixels).float()
        logits, start = [], 0
        while start < len(pixels):
            end = start + 1
            while end < len(pixels) and torch.equal(pixels[end, :-1], pixels[start, :-1]):
                end += 1
            logits.append(self.forward_regions(pixels[start, :-1], pixels[start:end, -1]))
            start = end
        return torch.cat(logits)

    def _group(self, image: Tensor, masks: Tensor) -> Tensor:
        if self._session is None:
            # Only the number of masks may vary between calls: the compiler must not make the photo's size symbolic
            # when another model of another input size was compiled first (one graph per runner, not per model).
            image, masks = image.view(image.shape), masks.view(masks.shape)  # marked, not the caller's tensors
            torch._dynamo.mark_static(image)
            for dim in (1, 2, 3):
                torch._dynamo.mark_static(masks, dim)
            return self._compiled_group(image, masks)
        expected = tuple(self.model.pretrained_cfg["input_size"][1:])
        if tuple(image.shape[-2:]) != expected:
            raise ServingError(
                f"the onnxruntime graph takes photos of the model's input size {expected[0]}x{expected[1]}, "
                f"got {image.shape[-2]}x{image.shape[-1]}: prepare them with its data config (predict does)"
            )
        feed = {"image": image.float().cpu().numpy(), "masks": masks.float().cpu().numpy()}
        return torch.from_numpy(self._session.run(None, feed)[0])

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


@dataclass(frozen=True)
class ServingOptions:
    """How ``predict``, ``eval`` and the app serve a model: ``precision``, ``runtime`` (default: eager, ONNX Runtime
    for int8) and, for int8, the region dataset (folder or Hub id) whose ``calibration_split`` calibrates it."""

    precision: str = "fp32"
    runtime: str | None = None
    calibration: str | None = None
    calibration_split: str = "train"
    calibration_regions: int = CALIBRATION_REGIONS

    def __post_init__(self) -> None:
        resolve_options(self.precision, self.runtime)
        if self.calibration is not None and self.precision != "int8":
            raise ServingError(f"--calibration goes with --precision int8, not {self.precision}")
        if self.precision == "int8" and self.calibration is None:
            raise ServingError(
                "int8 needs calibration regions: --calibration DATASET (a region dataset folder or Hub id)"
            )

    def runner(self, model: RoiAttentionNet) -> RegionRunner:
        """``model`` served with these options (``prepare_runner``)."""
        calibration = None
        if self.calibration is not None:
            calibration = calibration_groups(self.calibration, self.calibration_split, model, self.calibration_regions)
        return prepare_runner(model, self.precision, self.runtime, calibration)


def as_runner(model: nn.Module | RegionRunner) -> RegionRunner:
    """A runner as given, or the eager float32 one of a model, which may come wrapped (DDP, FSDP, compiled): the
    wrapper runs batches of photos, the model inside it ``forward_regions``."""
    if isinstance(model, RegionRunner):
        return model
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    return RegionRunner(inner, "fp32", "eager", batch_module=model)


def prepare_runner(
    model: RoiAttentionNet,
    precision: str = "fp32",
    runtime: str | None = None,
    calibration: Iterable[tuple[Tensor, Tensor]] | None = None,
) -> RegionRunner:
    """Serve ``model`` (in eval mode, on its device) at ``precision`` on ``runtime`` (default: eager, or ONNX
    Runtime for int8). int8 is calibrated on ``calibration``: ``(image (1,C,H,W), masks (N,1,H,W))`` groups as
    the model takes them, e.g. ``calibration_groups`` of a region dataset split. Raises ``ServingError`` where the
    machine, the model or the options cannot do it."""
    runtime = resolve_options(precision, runtime)
    if model.training:
        raise ServingError("serving takes a model in eval mode: call model.eval() first")
    device = next(model.parameters()).device
    if precision == "bf16":
        if device.type == "cpu" and not cpu_has_bf16():
            raise ServingError(
                f"bf16 needs a CPU with bf16 instructions (AVX512-BF16 or AMX); this one has "
                f"{torch.backends.cpu.get_cpu_capability()}, where bf16 is emulated and slower than fp32: "
                "use --precision int8 (with --calibration) or fp32"
            )
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ServingError(f"bf16 is not supported on {torch.cuda.get_device_name(device)}")
    if precision == "int8" and calibration is None:
        raise ServingError("int8 needs calibration regions: --calibration DATASET (a region dataset folder or Hub id)")
    session = None
    if runtime == "onnxruntime":
        if device.type != "cpu":
            raise ServingError(f"the onnxruntime runtime serves on the CPU; the model is on {device}")
        session = _onnxruntime_session(model, calibration if precision == "int8" else None)
    return RegionRunner(model, precision, runtime, session)


def _example_input(model: RoiAttentionNet) -> tuple[Tensor, Tensor]:
    """A photo of the model's input size and two box masks (2, not 1: export keeps the mask count dynamic)."""
    _, height, width = model.pretrained_cfg.get("input_size", (3, 224, 224))
    masks = torch.zeros(2, 1, height, width)
    masks[0, :, : height // 2, : width // 2] = 1
    masks[1, :, height // 4 :, width // 4 :] = 1
    return torch.zeros(1, model.in_chans, height, width), masks


def _onnxruntime_session(model: RoiAttentionNet, calibration: Iterable[tuple[Tensor, Tensor]] | None) -> Any:
    """An ONNX Runtime session of ``RegionGroupGraph(model)`` for photos of the model's input size, the number of
    masks dynamic; statically quantised to int8 on ``calibration`` when given."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ServingError(
            f"the onnxruntime runtime needs the onnx extra: pip install 'roi-attention[onnx]' ({error})"
        ) from error
    shapes = {"image": None, "masks": {0: torch.export.Dim("regions", min=1)}}
    with tempfile.TemporaryDirectory(prefix="roi-attention-onnx-") as folder:
        path = os.path.join(folder, "model.onnx")
        try:
            program = torch.onnx.export(
                RegionGroupGraph(model).eval(),
                _example_input(model),
                input_names=["image", "masks"],
                output_names=["logits"],
                dynamic_shapes=shapes,
                dynamo=True,
                verbose=False,
            )
            program.save(path)
        except Exception as error:
            name = model.pretrained_cfg.get("architecture")
            raise ServingError(f"{name} could not be exported to ONNX: {str(error).splitlines()[0]}") from error
        if calibration is not None:
            path = _quantize_int8(path, calibration)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _quantize_int8(path: str, calibration: Iterable[tuple[Tensor, Tensor]]) -> str:
    """ONNX Runtime static quantisation (QOperator, per-channel int8 weights, uint8 activations) of ``path``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.groups = iter(calibration)
            self.count = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            group = next(self.groups, None)
            if group is None:
                return None
            self.count += 1
            image, masks = group
            return {"image": image.float().cpu().numpy(), "masks": masks.float().cpu().numpy()}

    prepared, quantized = path.replace(".onnx", ".pre.onnx"), path.replace(".onnx", ".int8.onnx")
    reader = Reader()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs every tensor whose shape it does not know to the root logger
    try:
        try:
            quant_pre_process(path, prepared)
        except Exception:  # ONNX Runtime's symbolic shape inference knows no RoiAlign (crop variants): ONNX's own
            quant_pre_process(path, prepared, skip_symbolic_shape=True)
        quantize_static(
            prepared,
            quantized,
            reader,
            quant_format=QuantFormat.QOperator,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=not _cpu_has_vnni(),
        )
    finally:
        root.setLevel(level)
    if reader.count == 0:
        raise ServingError("int8 calibration got no regions")
    return quantized


def calibration_groups(
    dataset: str | os.PathLike, split: str, model: RoiAttentionNet, count: int = CALIBRATION_REGIONS
) -> Iterator[tuple[Tensor, Tensor]]:
    """``count`` regions of a region dataset split, spread evenly over it, as ``(image, mask)`` groups prepared
    for ``model`` (its eval transform): int8 calibration data."""
    from .data.regions import RegionDataset
    from .data.transforms import eval_transform

    if count < 1:
        raise ServingError(f"calibration needs at least one region, got {count}")
    regions = RegionDataset(dataset, split, transform=eval_transform(timm.data.resolve_data_config({}, model=model)))
    if len(regions) == 0:
        raise ServingError(f"split {split!r} of {dataset} has no regions to calibrate on")
    indices = np.unique(np.linspace(0, len(regions) - 1, min(count, len(regions))).round().astype(int))

    def groups() -> Iterator[tuple[Tensor, Tensor]]:
        for index in indices:
            pixels = regions[int(index)]["pixel_values"]
            yield pixels[None, :-1], pixels[None, -1:]

    return groups()
