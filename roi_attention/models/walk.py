"""Where the mask enters a timm CNN: its modules walked in order, with merge points between them.

An ROI model does not call its backbone's ``forward_features``: it walks the backbone's modules in the order that
``forward_features`` runs them (as timm's ``FeatureDictNet`` walks a model), and merges the mask after the modules
that end at a merge point. The walk is derived from what timm knows about the backbone (``first_conv`` and
``feature_info``) and verified on a fresh copy of it with random weights when a model is built: walking the
modules must reproduce ``forward_features`` and, at every stage, ``forward_intermediates``. A backbone that
cannot be walked that way is refused with ``WiringError``, never merged in the wrong place.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

import timm
import torch
from torch import Tensor, nn

__all__ = ["Step", "Walk", "WiringError", "first_conv_name", "resolve_walk"]

# Model arguments that do not change what forward_features computes (nor the module names).
_ARGS_WITHOUT_EFFECT_ON_FEATURES = ("num_classes", "global_pool", "drop_rate", "device", "dtype")


class WiringError(ValueError):
    """The backbone cannot take the mask where the variant merges it."""


class Step(NamedTuple):
    """One module of the walk: ``name`` in the backbone, the ``roi_branch`` key merged after it ("" for none),
    and the ``feature_info`` index whose output it is (-1 for none)."""

    name: str
    merge: str = ""
    feature: int = -1


@dataclass(frozen=True)
class Walk:
    """The verified walk of one backbone for one kind of merge point.

    ``steps``: every module of ``forward_features`` in order. ``merges``: ``(module name, channels)`` of each
    merge point. ``features_walked``: whether every ``feature_info`` stage is a step (``forward_intermediates``
    can then be walked too).
    """

    steps: tuple[Step, ...]
    merges: tuple[tuple[str, int], ...]
    features_walked: bool


def merge_key(module_name: str) -> str:
    """The ``roi_branch`` key of the merge point after backbone module ``module_name``."""
    return module_name.replace(".", "_")


def first_conv_name(backbone: nn.Module) -> str:
    """The module name of the backbone's first conv (timm's ``first_conv``)."""
    first_conv = backbone.pretrained_cfg.get("first_conv")
    if isinstance(first_conv, (tuple, list)):
        if len(first_conv) != 1:
            raise WiringError(
                f"{type(backbone).__name__} starts with {len(first_conv)} parallel convs ({', '.join(first_conv)}): "
                "there is no single first conv to merge the mask after"
            )
        first_conv = first_conv[0]
    if not first_conv:
        raise WiringError(f"{type(backbone).__name__} has no first_conv in its pretrained config")
    return first_conv


_walks: dict[tuple[str, str, str], Walk] = {}
_walks_lock = threading.Lock()


def resolve_walk(backbone_name: str, at: str, backbone_kwargs: dict[str, Any]) -> Walk:
    """The walk of timm model ``backbone_name`` (built with ``backbone_kwargs``) for merge points ``at``
    (``l1``, ``l3`` or ``all``), derived and verified once per process for each architecture.

    It is verified on a float32 copy on the CPU with random weights, whatever the model is built on; a model built
    on the meta device (no memory, as timm's config checks and ``roi-attention push`` build them) is verified on
    a meta copy, by shapes.
    """
    kwargs = {k: v for k, v in backbone_kwargs.items() if k not in _ARGS_WITHOUT_EFFECT_ON_FEATURES}
    meta = torch.device(backbone_kwargs.get("device") or torch.get_default_device()).type == "meta"
    key = (backbone_name, at, repr(sorted(kwargs.items())), meta)
    with _walks_lock:
        if key not in _walks:
            # Drawn from its own random stream: building a model gives the same weights whether its walk was
            # derived before or not.
            with torch.device("meta" if meta else "cpu"), torch.random.fork_rng(devices=[]):
                _walks[key] = _derive_walk(backbone_name, at, kwargs, values=not meta)
        return _walks[key]


def _derive_walk(backbone_name: str, at: str, kwargs: dict[str, Any], values: bool = True) -> Walk:
    backbone = timm.create_model(backbone_name, pretrained=False, **kwargs).float().eval()
    if values:
        _randomise(backbone)
    kind = type(backbone).__name__
    infos = list(backbone.feature_info)
    modules = dict(backbone.named_modules())
    points = _merge_points(backbone, at, infos, modules)
    wanted = [name for name, _ in points]
    stages = [info["module"] for info in infos if info["module"] and info["module"] in modules]
    problems = []
    # First with every feature_info stage on the walk (forward_intermediates can then be walked too), else
    # with the merge points only.
    for targets, all_features in ((wanted + stages, len(stages) == len(infos)), (wanted, False)):
        try:
            names = _flatten(backbone, targets)
            steps = _verify(backbone, names, points, infos, kwargs.get("in_chans", 3), values)
        except WiringError as error:
            problems.append(str(error))
            continue
        names = [step.name for step in steps]
        points = [(names[_end_of(name, names)], channels) for name, channels in points]  # a container: its end
        if at == "all":
            points = _without_stem_repeats(points, steps, backbone)
        merges = {name: merge_key(name) for name, _ in points}
        steps = tuple(
            Step(step.name, merges.get(step.name, ""), step.feature if all_features else -1) for step in steps
        )
        return Walk(steps, tuple(points), all_features)
    raise WiringError(f"{backbone_name} ({kind}) cannot take the mask at {at}: {problems[-1]}")


def _merge_points(
    backbone: nn.Module, at: str, infos: list[dict[str, Any]], modules: dict[str, nn.Module]
) -> list[tuple[str, int]]:
    kind = type(backbone).__name__
    if at == "l3":
        stride16 = [info for info in infos if info["reduction"] == 16]
        if not stride16:
            raise WiringError(f"{kind} has no stage of stride 16 in its feature_info")
        return [_stage_point(stride16[-1], modules, kind)]
    first_conv = first_conv_name(backbone)
    conv = modules.get(first_conv)
    if not isinstance(conv, nn.Conv2d):
        raise WiringError(f"{kind}'s first_conv {first_conv!r} is not a conv module")
    stem = (first_conv, conv.out_channels)
    if at == "l1":
        return [stem]
    if at == "all":
        stages = [
            _stage_point(info, modules, kind)
            for info in infos
            if info["module"] != first_conv and not first_conv.startswith(info["module"] + ".")
        ]
        return [stem, *stages]
    raise ValueError(f"unknown merge point {at!r}, expected l1, l3 or all")


def _stage_point(info: dict[str, Any], modules: dict[str, nn.Module], kind: str) -> tuple[str, int]:
    if not info["module"] or info["module"] not in modules:
        raise WiringError(f"{kind}'s feature_info stage {info['module']!r} is not a module of the model")
    return info["module"], info["num_chs"]


def _without_stem_repeats(
    points: list[tuple[str, int]], steps: tuple[Step, ...], backbone: nn.Module
) -> list[tuple[str, int]]:
    """Drop stages that only re-expose the stem: no conv runs between the first conv and them (ResNet's ``act1``,
    DenseNet's ``norm0``, MobileNetV3-Small's ``bn1``), so merging there would merge twice at the stem."""
    names = [step.name for step in steps]
    stem = names.index(points[0][0])
    kept = [points[0]]
    for name, channels in points[1:]:
        between = names[stem + 1 : names.index(name) + 1]
        if any(isinstance(m, nn.Conv2d) for step in between for m in backbone.get_submodule(step).modules()):
            kept.append((name, channels))
    return kept


def _flatten(backbone: nn.Module, targets: list[str]) -> list[str]:
    """The backbone's children in order, containers that hold a target replaced by their own children."""
    names = [name for name, _ in backbone.named_children()]
    while True:
        expanded = []
        for name in names:
            if any(target.startswith(name + ".") for target in targets):
                expanded += [f"{name}.{child}" for child, _ in backbone.get_submodule(name).named_children()]
            else:
                expanded.append(name)
        if expanded == names:
            break
        names = expanded
    missing = [target for target in targets if _end_of(target, names) is None]
    if missing:
        raise WiringError(f"{missing[0]!r} is not reached by walking the model's modules in order")
    return names


def _end_of(module: str, names: list[str]) -> int | None:
    """The index of the step whose output is ``module``'s: itself, or the last step inside it."""
    inside = [i for i, name in enumerate(names) if name == module or name.startswith(module + ".")]
    return inside[-1] if inside else None


def _verify(
    backbone: nn.Module,
    names: list[str],
    points: list[tuple[str, int]],
    infos: list[dict[str, Any]],
    in_chans: int,
    values: bool = True,
) -> tuple[Step, ...]:
    """The steps of ``names`` that make ``forward_features``, checked against the backbone's own forward (by value,
    or by shape only: then the last step whose output has the features' shape ends the walk)."""
    x = torch.randn(1, in_chans, *_probe_size(backbone), generator=None if not values else _generator())
    with torch.no_grad():
        expected = backbone.forward_features(x)
        try:
            intermediates = backbone.forward_intermediates(x, indices=len(infos), intermediates_only=True)
        except Exception:  # a backbone without forward_intermediates: its stages are checked by channels
            intermediates = None
        outputs: dict[str, Tensor] = {}
        last_point = max(_end_of(name, names) for name, _ in points) if points else 0
        end = None
        for index, name in enumerate(names):
            try:
                x = backbone.get_submodule(name)(x)
            except Exception as error:
                if end is not None:  # past the end, into the head
                    break
                raise WiringError(
                    f"running the model's modules in order fails at {name!r} ({type(error).__name__}): its "
                    "forward_features is not a sequence of its modules"
                ) from error
            if not isinstance(x, Tensor):
                if end is not None:
                    break
                raise WiringError(
                    f"{name!r} gives a {type(x).__name__}, not a feature map: the modules pass more than a tensor"
                )
            outputs[name] = x
            if index >= last_point and _same(x, expected, values):
                end = index
                if values:
                    break
        if end is None:
            raise WiringError("running the model's modules in order does not reproduce its forward_features")
    while end + 1 < len(names) and isinstance(backbone.get_submodule(names[end + 1]), nn.Identity):
        outputs[names[end + 1]] = outputs[names[end]]
        end += 1
    features = {}
    for index, info in enumerate(infos):
        stage_end = _end_of(info["module"], names[: end + 1])
        if stage_end is None:
            continue
        features[names[stage_end]] = index
        output = outputs[names[stage_end]]
        name = info["module"]
        if output.shape[1] != info["num_chs"]:
            raise WiringError(f"stage {name!r} gives {output.shape[1]} channels, feature_info says {info['num_chs']}")
        if intermediates is not None and not _same(output, intermediates[index], values):
            raise WiringError(f"the output of {name!r} is not the model's intermediate {index} (feature_info)")
    for name, channels in points:
        output = outputs[names[_end_of(name, names)]]
        if output.shape[1] != channels:
            raise WiringError(f"{name!r} gives {output.shape[1]} channels, expected {channels}")
    return tuple(Step(name, "", features.get(name, -1)) for name in names[: end + 1])


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _same(a: Any, b: Any, values: bool = True) -> bool:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.shape != b.shape:
        return False
    if not values:
        return True
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(b.abs().max())))


def _probe_size(backbone: nn.Module) -> tuple[int, int]:
    cfg = backbone.pretrained_cfg
    if cfg.get("fixed_input_size"):
        return tuple(cfg["input_size"][1:])
    low = (cfg.get("min_input_size") or (3, 96, 96))[1:]
    return max(96, low[0]), max(96, low[1])


def _randomise(backbone: nn.Module) -> None:
    """Weights with no constant tensor (zero-initialised gammas and biases make blocks identities, which would
    let a wrong walk pass) and batch-norm statistics that are not the identity."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in backbone.parameters():
            if parameter.numel() and bool((parameter == parameter.flatten()[0]).all()):
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
        for name, buffer in backbone.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
