"""Serving an ROI model at a precision (float32, bf16, int8) on a runtime (eager PyTorch, torch.compile, ONNX
Runtime): one ``RegionRunner`` that ``predict``, ``eval`` and the app classify through."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import Tensor, nn

from .files import write_whole, writing_whole
from .models import RoiAttentionNet

__all__ = [
    "CALIBRATION_REGIONS",
    "PRECISIONS",
    "RUNTIMES",
    "GraphCache",
    "Int8Agreement",
    "Int8AgreementWarning",
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
# bf16 on a CPU that has it runs channels-last, and the masks of a variant that shares little this many pixels
# (masks x H x W) per forward: bf16's gains grow with the batch (roi_resnet50_add_l1 at 224x224 on an Intel Xeon
# with AMX: 1.8x float32 one mask a forward, 3.3-3.4x four to eight; BENCHMARKS.md).
BF16_CPU_REGION_PIXELS = 8 * 224 * 224
# int8 calibrates on all but every INT8_HELD_OUT-th calibration region; those measure its agreement with float32
# (top-1 equal on INT8_AGREEMENT of them, INT8_SURE_AGREEMENT of those where float32's top-1 p >= SURE_PROBABILITY).
INT8_HELD_OUT = 4
INT8_AGREEMENT = 0.90
INT8_SURE_AGREEMENT = 0.98
SURE_PROBABILITY = 0.5
# float32's top-1 minus top-2 probability below which two classes are a near-tie: any rounding may swap them
# (on ImageNet Lite0 regions int8 and bf16 each kept 39-79% of such answers, and 96-100% from a margin of 0.2 up).
NEAR_TIE_MARGIN = 0.05
# Bumped whenever the export or the quantisation recipe changes what a cached graph holds.
GRAPH_RECIPE = 7
GRAPH_CACHE_ENTRIES = 16  # the least recently used entries beyond this many are removed


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
        self,
        model: RoiAttentionNet,
        precision: str,
        runtime: str,
        session: Any = None,
        batch_module: Any = None,
        int8_agreement: Int8Agreement | None = None,
    ) -> None:
        self.model, self.precision, self.runtime = model, precision, runtime
        self.int8_agreement = int8_agreement  # int8: measured on the held-out calibration regions
        self._session = session
        self._compiled_group = torch.compile(RegionGroupGraph(model)) if runtime == "compile" else None
        # What runs a batch of photos: the model as the caller wrapped it (DDP, FSDP, compiled), or compiled here.
        self._batch_module = batch_module or (torch.compile(model) if runtime == "compile" else model)

    def __repr__(self) -> str:
        return f"RegionRunner({self.model.pretrained_cfg.get('architecture')}, {self.precision}, {self.runtime})"

    def describe(self) -> dict[str, Any]:
        """Precision and runtime, and int8's measured agreement with float32 where there is one."""
        described: dict[str, Any] = dict(precision=self.precision, runtime=self.runtime)
        if self.int8_agreement is not None:
            agreement = self.int8_agreement
            described["int8_agreement"] = dict(
                dataclasses.asdict(agreement),
                overall=agreement.overall if agreement.regions else None,
                where_sure=agreement.where_sure if agreement.sure else None,
            )
        return described

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
        if self._bf16_on_cpu and not self.model.shares_trunk:
            return max(1, min(count, BF16_CPU_REGION_PIXELS // (height * width)))
        return self.model.regions_chunk_size(count, height, width, self.device)

    @property
    def _bf16_on_cpu(self) -> bool:
        return self.precision == "bf16" and self.device.type == "cpu"

    def _layout(self, pixels: Tensor) -> Tensor:
        """A batch of photos channels-last where the model is (bf16 on a CPU), as it is elsewhere."""
        if self._bf16_on_cpu and pixels.ndim == 4:
            return pixels.contiguous(memory_format=torch.channels_last)
        return pixels

    def forward_regions(self, image: Tensor, masks: Tensor, group_size: int | None = None) -> Tensor:
        """Logits ``(N, classes)`` of the ``(N,H,W)`` or ``(N,1,H,W)`` masks of one ``(C,H,W)`` photo, like
        ``RoiAttentionNet.forward_regions``; the masks go ``group_size`` at a time (default ``group_size()``)."""
        with torch.inference_mode(), self._autocast():
            chunk = group_size or self.group_size(masks.shape[0], *image.shape[-2:])
            if self.runtime == "eager":
                photo = self._layout(image.unsqueeze(0) if image.ndim == 3 else image)
                return self.model.forward_regions(photo, masks, chunk_size=chunk).float()
            image, masks = self.model.regions_input(image, masks)
            return torch.cat([self._group(self._layout(image[:1]), group) for group in masks.split(chunk)]).float()

    def __call__(self, pixels: Tensor) -> Tensor:
        """Logits of a packed ``(B,C+1,H,W)`` batch of regions of any photos: one forward where the runner
        batches photos, else each run of consecutive regions of one photo through ``forward_regions``."""
        if self.batches_photos:
            with torch.inference_mode(), self._autocast():
                return self._batch_module(self._layout(pixels)).float()
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
    the model takes them, e.g. ``calibration_groups`` of a region dataset split; every ``INT8_HELD_OUT``-th
    region is held out to measure int8's top-1 agreement with float32 (``runner.int8_agreement``; an
    ``Int8AgreementWarning`` below the tolerance); bf16 on a CPU lays the model's weights out channels-last (in
    place, values unchanged). ONNX Runtime graphs are kept in the ``GraphCache``. Raises
    ``ServingError`` where the machine, the model or the options cannot do it."""
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
        if device.type == "cpu":  # oneDNN's bf16 kernels want channels-last (the same values, laid out anew)
            model.to(memory_format=torch.channels_last)
    if precision == "int8" and calibration is None:
        raise ServingError("int8 needs calibration regions: --calibration DATASET (a region dataset folder or Hub id)")
    session = agreement = None
    if runtime == "onnxruntime":
        if device.type != "cpu":
            raise ServingError(f"the onnxruntime runtime serves on the CPU; the model is on {device}")
        session, agreement = _onnxruntime_session(model, calibration if precision == "int8" else None)
    return RegionRunner(model, precision, runtime, session, int8_agreement=agreement)


def _example_input(model: RoiAttentionNet) -> tuple[Tensor, Tensor]:
    """A photo of the model's input size and two box masks (2, not 1: export keeps the mask count dynamic)."""
    _, height, width = model.pretrained_cfg.get("input_size", (3, 224, 224))
    masks = torch.zeros(2, 1, height, width)
    masks[0, :, : height // 2, : width // 2] = 1
    masks[1, :, height // 4 :, width // 4 :] = 1
    return torch.zeros(1, model.in_chans, height, width), masks


def _onnxruntime_session(
    model: RoiAttentionNet, calibration: Iterable[tuple[Tensor, Tensor]] | None
) -> tuple[Any, Int8Agreement | None]:
    """An ONNX Runtime session of ``RegionGroupGraph(model)`` for photos of the model's input size, the number of
    masks dynamic; statically quantised to int8 on ``calibration`` when given, with its agreement with float32 on
    the calibration regions held out. The graph comes from the graph cache when an entry matches."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ServingError(
            f"the onnxruntime runtime needs the onnx extra: pip install 'roi-attention[onnx]' ({error})"
        ) from error
    regions = None if calibration is None else _single_regions(calibration)
    entry = GraphCache().entry(model, "int8" if regions is not None else "fp32", regions)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    cached = entry.load()
    if cached is not None:
        graph, agreement = cached
        try:
            session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
            _warn_below_tolerance(agreement)
            return session, agreement
        except Exception as error:  # a cache file that passed its checksum yet does not load: rebuilt
            warnings.warn(f"graph cache entry {entry.folder} does not load ({error}); rebuilding it", stacklevel=3)
    with tempfile.TemporaryDirectory(prefix="roi-attention-onnx-") as folder:
        path = os.path.join(folder, "model.onnx")
        _export_onnx(model, path)
        agreement = None
        if regions is None:
            session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        else:
            path, session, agreement = _quantize_int8_by_measurement(model, path, regions, options)
        entry.store(Path(path).read_bytes(), agreement)
    _warn_below_tolerance(agreement)
    return session, agreement


def _export_onnx(model: RoiAttentionNet, path: str) -> None:
    shapes = {"image": None, "masks": {0: torch.export.Dim("regions", min=1)}}
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


def _single_regions(calibration: Iterable[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """The calibration groups as one ``(image (1,C,H,W), mask (1,1,H,W))`` pair per region, on the CPU."""
    regions = []
    for image, masks in calibration:
        image = image.float().cpu()
        regions += [(image, mask[None]) for mask in masks.float().cpu()]
    if not regions:
        raise ServingError("int8 calibration got no regions")
    return regions


def _float_nodes(path: str, first_conv: bool) -> list[str]:
    """The nodes int8 keeps in float32: those computed from the masks alone (a crop's box coordinates, a resized
    mask: in uint8 the crop moved by pixels) and, with ``first_conv``, the first convolution on the photo."""
    import onnx

    nodes = onnx.load(path, load_external_data=False).graph.node
    consumers: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    on_photo, frontier = set(), ["image"]
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.name not in on_photo:
                on_photo.add(node.name)
                frontier += list(node.output)
    keep = [node.name for node in nodes if node.name not in on_photo]
    conv = next((n.name for n in nodes if n.op_type == "Conv" and n.name in on_photo), None)
    return keep + ([conv] if first_conv and conv else [])


def _quantize_int8_by_measurement(
    model: RoiAttentionNet, path: str, regions: list[tuple[Tensor, Tensor]], options: Any
) -> tuple[str, Any, Int8Agreement | None]:
    """int8 graphs of ``path`` calibrated on all but every ``INT8_HELD_OUT``-th region, with and without the first
    convolution in float32, with and without the bias correction; the one whose answers diverge less from
    float32's on the held-out regions is kept. Measured on the ImageNet Lite0/1/2 and regions of other photos:
    each choice gains up to 8-23 points of top-1 agreement on some models and loses up to 6 on others, and the
    held-out divergence picked the best of the four graphs, or one within a point of it, on six models.
    Returns its path, session and agreement."""
    import onnxruntime

    held_out = regions[INT8_HELD_OUT - 1 :: INT8_HELD_OUT] if len(regions) >= INT8_HELD_OUT else []
    calibrated = [r for k, r in enumerate(regions) if not held_out or (k + 1) % INT8_HELD_OUT]
    expected = _float_answers(model, held_out)
    recipes = itertools.product((True, False), (False, True)) if held_out else [(True, False)]
    best = None
    for correct_biases, first_conv in recipes:
        quantized = _quantize_int8(path, calibrated, first_conv, correct_biases)
        if quantized is None:
            continue
        session = onnxruntime.InferenceSession(quantized, options, providers=["CPUExecutionProvider"])
        agreement, divergence = _int8_agreement(expected, session, held_out)
        if best is None or divergence < best[0]:
            best = (divergence, quantized, session, agreement)
    assert best is not None  # the corrected graph is never skipped
    _, quantized, session, agreement = best
    return quantized, session, agreement


def _quantize_int8(
    path: str, regions: list[tuple[Tensor, Tensor]], first_conv: bool, correct_biases: bool = True
) -> str | None:
    """ONNX Runtime static quantisation of ``path`` calibrated on ``regions``: QDQ, symmetric per-channel int8
    weights, uint8 activations, ``_float_nodes`` kept in float32 and, with ``correct_biases``, the convolutions'
    biases corrected for the weights' rounding (``_correct_conv_biases``). None without ``correct_biases`` where
    there is nothing to correct: the corrected graph is this one."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.regions = iter(regions)

        def get_next(self) -> dict[str, np.ndarray] | None:
            region = next(self.regions, None)
            return None if region is None else {"image": region[0].numpy(), "masks": region[1].numpy()}

    prepared = path.replace(".onnx", ".pre.onnx")
    suffix = (".first-conv-float" if first_conv else "") + ("" if correct_biases else ".uncorrected")
    corrected = path.replace(".onnx", f".bias-corrected{suffix}.onnx")
    quantized = path.replace(".onnx", f".int8{suffix}.onnx")
    reduce_range = not _cpu_has_vnni()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs every tensor whose shape it does not know to the root logger
    try:
        if not os.path.exists(prepared):
            try:
                quant_pre_process(path, prepared)
            except Exception:  # ONNX Runtime's symbolic shape inference knows no RoiAlign (crop variants)
                quant_pre_process(path, prepared, skip_symbolic_shape=True)
        excluded = _float_nodes(prepared, first_conv)
        if correct_biases:
            _correct_conv_biases(prepared, corrected, regions, excluded, reduce_range)
        elif not _correctable_convs(onnx.load(prepared), excluded):
            return None
        quantize_static(
            corrected if correct_biases else prepared,
            quantized,
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
            nodes_to_exclude=excluded,
            extra_options=dict(WeightSymmetric=True),
        )
    finally:
        root.setLevel(level)
    return quantized


def _correct_conv_biases(
    path: str, corrected: str, regions: list[tuple[Tensor, Tensor]], excluded: list[str], reduce_range: bool
) -> None:
    """Write to ``corrected`` the graph at ``path`` with each quantised convolution's bias less the mean shift
    that rounding its weights to int8 causes: ``(W_int8 - W)`` applied to the convolution's mean input channels
    over ``regions`` (empirical bias correction, Nagel et al. 2019, arXiv 1906.04721). The weights are rounded
    as ``quantize_static`` rounds them (symmetric, per output channel). Measured on the ImageNet Lite0 ``crop``:
    rounding the weights alone, activations float, kept float32's top-1 on 77% of real-photo regions, 92% with
    the correction."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, numpy_helper
    from onnxruntime.quantization.quant_utils import quantize_data

    model = onnx.load(path)
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    convs = _correctable_convs(model, excluded)
    inputs = list(dict.fromkeys(node.input[0] for node in convs))
    given = {tensor.name for tensor in model.graph.input}
    computed = [name for name in inputs if name not in given]
    outputs = len(model.graph.output)
    known = {output.name for output in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in computed if name not in known)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    means = dict.fromkeys(inputs, 0.0)
    for image, mask in regions:
        feeds = {"image": image.numpy(), "masks": mask.numpy()}
        values = feeds | (dict(zip(computed, session.run(computed, feeds), strict=True)) if computed else {})
        for name in inputs:
            means[name] = means[name] + values[name].mean(axis=(0, 2, 3), dtype=np.float64) / len(regions)
    del model.graph.output[outputs:]
    for node in convs:
        weight = numpy_helper.to_array(weights[node.input[1]])
        bias = numpy_helper.to_array(weights[node.input[2]])
        rounded = np.empty_like(weight)
        for channel, channel_weights in enumerate(weight):
            zero_point, scale, quantized = quantize_data(channel_weights, TensorProto.INT8, True, reduce_range)
            rounded[channel] = (quantized.astype(np.float32) - zero_point) * scale
        groups = next((attribute.i for attribute in node.attribute if attribute.name == "group"), 1)
        error = (rounded - weight).sum(axis=(2, 3), dtype=np.float64)  # (out, in / groups)
        mean = means[node.input[0]].reshape(groups, -1)  # (groups, in / groups)
        shift = np.einsum("goi,gi->go", error.reshape(groups, -1, error.shape[1]), mean).reshape(-1)
        weights[node.input[2]].CopyFrom(numpy_helper.from_array((bias - shift).astype(bias.dtype), node.input[2]))
    onnx.save(model, corrected)


def _correctable_convs(model: Any, excluded: list[str]) -> list[Any]:
    """The 2-D convolutions of the ONNX ``model`` that int8 quantises, with a weight and a bias of their own."""
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    return [
        node
        for node in model.graph.node
        if node.op_type == "Conv" and node.name not in excluded and len(node.input) == 3
        and node.input[1] in weights and node.input[2] in weights and uses[node.input[2]] == 1
        and len(weights[node.input[1]].dims) == 4
    ]  # fmt: skip


@dataclass(frozen=True)
class Int8Agreement:
    """How often int8's top-1 equals float32's on held-out calibration regions: over all ``regions``, over the
    ``sure`` ones where float32's top-1 has probability >= ``SURE_PROBABILITY``, and over the ``near_ties`` where
    float32's top two are within ``NEAR_TIE_MARGIN``."""

    regions: int
    agreeing: int
    sure: int
    sure_agreeing: int
    near_ties: int = 0
    near_tie_agreeing: int = 0

    @property
    def overall(self) -> float:
        return self.agreeing / self.regions if self.regions else float("nan")

    @property
    def where_sure(self) -> float:
        return self.sure_agreeing / self.sure if self.sure else float("nan")

    @property
    def within_tolerance(self) -> bool:
        return self.overall >= INT8_AGREEMENT and (self.sure == 0 or self.where_sure >= INT8_SURE_AGREEMENT)

    def __str__(self) -> str:
        sure = (
            f"{self.where_sure:.0%} of the {self.sure} where float32 is sure"
            if self.sure
            else "float32 is sure on none of them"
        )
        said = (
            f"int8 top-1 agrees with float32 on {self.overall:.0%} of {self.regions} held-out calibration regions "
            f"({sure}, p >= {SURE_PROBABILITY})"
        )
        misses = self.regions - self.agreeing
        if misses:
            near = self.near_ties - self.near_tie_agreeing
            share = f"{near} of its {misses} misses are near-ties"
            if misses == 1:
                share = "its one miss is a near-tie" if near else "its one miss is not a near-tie"
            said += f"; {share} (float32's top two within {NEAR_TIE_MARGIN}), where any rounding can swap them"
        return said


def _float_answers(model: RoiAttentionNet, regions: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
    """``model``'s eager float32 class probabilities on each region."""
    device = next(model.parameters()).device
    answers = []
    for image, mask in regions:
        with torch.inference_mode():
            logits = model.forward_region_group(image.to(device), mask.to(device))
        answers.append(logits.float().softmax(-1)[0].cpu())
    return answers


def _int8_agreement(
    expected: list[Tensor], session: Any, regions: list[tuple[Tensor, Tensor]]
) -> tuple[Int8Agreement, float]:
    """``session``'s top-1 against the float32 ``expected`` probabilities on ``regions``, and the mean KL
    divergence of its probabilities from them (a measure of the whole answer, steadier than counting flips)."""
    agreeing = sure = sure_agreeing = near_ties = near_tie_agreeing = 0
    divergence = 0.0
    for (image, mask), probabilities in zip(regions, expected, strict=True):
        logits = torch.from_numpy(session.run(None, {"image": image.numpy(), "masks": mask.numpy()})[0][0])
        same = int(logits.argmax() == probabilities.argmax())
        divergence += float((probabilities * (probabilities.clamp_min(1e-12).log() - logits.log_softmax(-1))).sum())
        agreeing += same
        if float(probabilities.max()) >= SURE_PROBABILITY:
            sure, sure_agreeing = sure + 1, sure_agreeing + same
        top_two = probabilities.topk(min(2, probabilities.numel())).values
        if len(top_two) == 2 and float(top_two[0] - top_two[1]) < NEAR_TIE_MARGIN:
            near_ties, near_tie_agreeing = near_ties + 1, near_tie_agreeing + same
    agreement = Int8Agreement(len(regions), agreeing, sure, sure_agreeing, near_ties, near_tie_agreeing)
    return agreement, divergence / max(len(regions), 1)


def _warn_below_tolerance(agreement: Int8Agreement | None) -> None:
    if agreement is not None and agreement.regions and not agreement.within_tolerance:
        warnings.warn(
            f"{agreement}: below the tolerance ({INT8_AGREEMENT:.0%}, {INT8_SURE_AGREEMENT:.0%} where sure). "
            "For float32's answers at about twice eager's speed use --precision fp32 --runtime onnxruntime",
            Int8AgreementWarning,
            stacklevel=4,
        )


class Int8AgreementWarning(UserWarning):
    """int8's answers differ from float32's more than the tolerance on the held-out calibration regions."""


class GraphCache:
    """Exported (and quantised) ONNX graphs on disk, so that a second start skips export and calibration: one
    folder per key (the weights, the model's structure and input size, the precision, the calibration regions, the
    recipe and the torch / onnx / onnxruntime versions), readable by the user only. An entry is written whole; one
    whose checksum fails is rebuilt with a warning; beyond ``GRAPH_CACHE_ENTRIES`` the least recently used go.
    ``ROI_ATTENTION_GRAPH_CACHE`` names the folder (default: ``graphs`` in the project's cache folder), ``off``
    turns it off."""

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        from .hub import default_cache_dir

        setting = os.environ.get("ROI_ATTENTION_GRAPH_CACHE", "")
        self.enabled = folder is not None or setting.lower() != "off"
        self.folder = Path(folder or setting or default_cache_dir() / "graphs")

    def entry(
        self, model: RoiAttentionNet, precision: str, regions: list[tuple[Tensor, Tensor]] | None = None
    ) -> GraphCacheEntry:
        """The entry of ``model`` at ``precision`` (int8: calibrated on ``regions``)."""
        import onnx
        import onnxruntime

        digest = hashlib.sha256()
        for part in (
            GRAPH_RECIPE,
            precision,
            repr(model),
            model.pretrained_cfg.get("input_size"),
            torch.__version__,
            onnx.__version__,
            onnxruntime.__version__,
            _cpu_has_vnni(),
        ):
            digest.update(f"{part}\n".encode())
        for name, tensor in model.state_dict().items():
            digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
            digest.update(_tensor_bytes(tensor))
        for image, mask in regions or []:
            digest.update(_tensor_bytes(image))
            digest.update(_tensor_bytes(mask))
        return GraphCacheEntry(self, self.folder / digest.hexdigest()[:32])

    def prune(self, keep: int = GRAPH_CACHE_ENTRIES) -> None:
        """Remove the least recently used entries beyond ``keep``."""
        entries = sorted((e for e in self.folder.glob("*/entry.json")), key=lambda e: e.stat().st_mtime, reverse=True)
        for stale in entries[keep:]:
            shutil.rmtree(stale.parent, ignore_errors=True)


def _tensor_bytes(tensor: Tensor) -> bytes:
    tensor = tensor.detach().cpu().contiguous().reshape(-1)
    return tensor.view(torch.uint8).numpy().tobytes()


@dataclass(frozen=True)
class GraphCacheEntry:
    """One cached graph: ``model.onnx`` and ``entry.json`` (its checksum and int8 agreement) in ``folder``."""

    cache: GraphCache
    folder: Path

    def load(self) -> tuple[str, Int8Agreement | None] | None:
        """The graph's path and agreement, or None when absent (or the cache is off); a damaged entry is removed
        with a warning."""
        record = self.folder / "entry.json"
        if not self.cache.enabled or not record.is_file():
            return None
        graph = self.folder / "model.onnx"
        try:
            entry = json.loads(record.read_text())
            if hashlib.sha256(graph.read_bytes()).hexdigest() != entry["sha256"]:
                raise ValueError("its checksum does not match")
            agreement = Int8Agreement(**entry["int8_agreement"]) if entry.get("int8_agreement") else None
        except (OSError, ValueError, KeyError, TypeError) as error:
            warnings.warn(f"graph cache entry {self.folder} is damaged ({error}); rebuilding it", stacklevel=4)
            shutil.rmtree(self.folder, ignore_errors=True)
            return None
        os.utime(record)  # recently used
        return str(graph), agreement

    def store(self, graph: bytes, agreement: Int8Agreement | None) -> None:
        """Write the entry whole (the graph first, the record naming its checksum last), for the user only."""
        if not self.cache.enabled:
            return
        try:
            self.cache.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.folder.mkdir(exist_ok=True, mode=0o700)
            with writing_whole(self.folder / "model.onnx") as partial:
                partial.touch(mode=0o600)
                partial.write_bytes(graph)
            record = dict(sha256=hashlib.sha256(graph).hexdigest(), recipe=GRAPH_RECIPE)
            record["int8_agreement"] = dataclasses.asdict(agreement) if agreement is not None else None
            write_whole(self.folder / "entry.json", json.dumps(record))
            os.chmod(self.folder / "entry.json", 0o600)
            self.cache.prune()
        except OSError as error:  # a read-only or full disk costs the next start its speed, not this answer
            warnings.warn(f"the graph could not be cached in {self.folder} ({error})", stacklevel=4)


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
