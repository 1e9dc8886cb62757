"""Where the mask enters a timm backbone: its modules walked in order, with merge points between them.

An ROI model does not call its backbone's ``forward_features``: it walks the backbone's modules in the order that
``forward_features`` runs them (as timm's ``FeatureDictNet`` walks a model), and merges the mask after the modules
that end at a merge point. The walk is derived from what timm knows about the backbone (``first_conv`` and
``feature_info``) and verified on a fresh copy of it with random weights when a model is built: walking the
modules must reproduce ``forward_features`` and, at every stage, ``forward_intermediates``. A backbone that
cannot be walked that way is refused with ``WiringError``, never merged in the wrong place.

A CNN's ``forward_features`` runs its children in order. A family whose forward also calls methods (a Vision
Transformer's ``_pos_embed``) declares its steps in ``FAMILIES``, and is verified the same way.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import timm
import torch
from torch import Tensor, nn

from ..layers.merge import TokenLayout

__all__ = [
    "FAMILIES",
    "METHOD_MODULES",
    "Family",
    "Step",
    "TokenLayout",
    "Walk",
    "WiringError",
    "feature_map",
    "first_conv_name",
    "resolve_walk",
]

# Model arguments that do not change what forward_features computes (nor the module names).
_ARGS_WITHOUT_EFFECT_ON_FEATURES = ("num_classes", "drop_rate", "device", "dtype")


class WiringError(ValueError):
    """The backbone cannot take the mask where the variant merges it."""


class Step(NamedTuple):
    """One step of the walk: ``name`` of a module in the backbone (or of a backbone method, ``method``), the
    ``roi_branch`` key merged after it ("" for none), and the ``feature_info`` index whose output it is (-1 for
    none)."""

    name: str
    merge: str = ""
    feature: int = -1
    method: bool = False


@dataclass(frozen=True)
class Family:
    """A backbone family whose ``forward_features`` is not its children run in order.

    ``steps``: what ``forward_features`` runs, in order: module names (a container is walked into where a merge
    point lies inside it) or names of the backbone's methods. ``stem``: the module whose output the ``l1`` merge
    point follows. ``tokens``: its features are token sequences, prefix tokens (class, registers, distillation)
    first, then the patch grid; merge layers add to the patch tokens only.
    """

    steps: tuple[str, ...]
    stem: str
    tokens: bool = False


# One entry per family, by class name (subclasses match through their bases).
FAMILIES: dict[str, Family] = {
    "VisionTransformer": Family(
        steps=("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks", "norm"),
        stem="patch_embed",
        tokens=True,
    ),
}


class PosEmbedStep(nn.Module):
    """A Vision Transformer's ``_pos_embed`` as a module: TorchScript walks the steps as a ``ModuleList``."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone._pos_embed(x)


# The families' method steps as modules, for TorchScript.
METHOD_MODULES: dict[str, type[nn.Module]] = {"_pos_embed": PosEmbedStep}


@dataclass(frozen=True)
class Walk:
    """The verified walk of one backbone for one kind of merge point.

    ``steps``: every step of ``forward_features`` in order. ``merges``: ``(module name, channels)`` of each
    merge point. ``features_walked``: whether every ``feature_info`` stage is a step (``forward_intermediates``
    can then be walked too). ``stem``: the module the ``l1`` merge point follows. ``tokens``: for a token
    family, the layout at each merge point (empty for a CNN).
    """

    steps: tuple[Step, ...]
    merges: tuple[tuple[str, int], ...]
    features_walked: bool
    stem: str = ""
    tokens: dict[str, TokenLayout] = field(default_factory=dict)


def merge_key(module_name: str) -> str:
    """The ``roi_branch`` key of the merge point after backbone module ``module_name``."""
    return module_name.replace(".", "_")


def family_of(backbone: nn.Module) -> Family | None:
    """The backbone's entry in ``FAMILIES`` (through its class or a base class), or None: its children in order."""
    for cls in type(backbone).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    return None


def stem_name(backbone: nn.Module) -> str:
    """The module the ``l1`` merge point follows: the family's stem, else timm's ``first_conv``."""
    family = family_of(backbone)
    if family:
        return family.stem
    try:
        return first_conv_name(backbone)
    except WiringError:  # no single first conv: no l1 merge point (the others may still wire)
        return ""


def feature_map(x: Tensor, layout: TokenLayout, image_size: tuple[int, int] | list[int]) -> Tensor:
    """A token family's ``(B,N,C)`` features at a stage as the ``(B,C,H,W)`` map of its patch grid (the prefix
    tokens left out), for an image of ``image_size``, as timm's ``forward_intermediates`` gives it."""
    if layout.channels_last:
        return x.permute(0, 3, 1, 2)
    (height, width), (patch_h, patch_w) = image_size, layout.patch_size
    rows = -(-height // patch_h) if layout.pad else height // patch_h
    columns = -(-width // patch_w) if layout.pad else width // patch_w
    grid = x[:, layout.prefix_tokens :]
    return grid.reshape(grid.shape[0], rows, columns, grid.shape[-1]).permute(0, 3, 1, 2)


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

    It is verified on a float32 copy on the CPU with random weights, whatever the model is built on: a model built
    on the meta device (no memory, as timm's config checks and ``roi-attention push`` build them) reuses it.
    """
    kwargs = {k: v for k, v in backbone_kwargs.items() if k not in _ARGS_WITHOUT_EFFECT_ON_FEATURES}
    # A Vision Transformer's walk does not depend on its number of patches (it is verified on a 3x3 grid)
    key = (backbone_name, at, repr(sorted((k, v) for k, v in kwargs.items() if k != "img_size")))
    with _walks_lock:
        if key not in _walks:
            # Drawn from its own random stream: building a model gives the same weights whether its walk was
            # derived before or not.
            with torch.device("cpu"), torch.random.fork_rng(devices=[]):
                _walks[key] = _derive_walk(backbone_name, at, kwargs)
        return _walks[key]


def _derive_walk(backbone_name: str, at: str, kwargs: dict[str, Any]) -> Walk:
    with torch.device("meta"):
        structure = timm.create_model(backbone_name, pretrained=False, **kwargs)
    family = family_of(structure)
    if family and family.tokens and not kwargs.get("dynamic_img_size"):
        # The walk does not depend on the number of patches: verified on a 3x3 grid, in a fraction of the time.
        patch = structure.patch_embed.patch_size
        kwargs = dict(kwargs, img_size=(3 * patch[0], 3 * patch[1]))
    backbone = _random_copy(backbone_name, kwargs)
    kind = type(backbone).__name__
    infos = list(backbone.feature_info)
    modules = dict(backbone.named_modules())
    points = _merge_points(backbone, at, infos, modules, family)
    if family and family.tokens and at != "l1" and not isinstance(backbone.get_submodule("patch_drop"), nn.Identity):
        raise WiringError(f"{kind} drops patch tokens (patch_drop_rate): the mask cannot follow them past the stem")
    wanted = [name for name, _ in points]
    stages = [info["module"] for info in infos if info["module"] and info["module"] in modules]
    layouts = _token_layouts(backbone, family, points)
    problems = []
    # First with every feature_info stage on the walk (forward_intermediates can then be walked too), else
    # with the merge points only.
    for targets, all_features in ((wanted + stages, len(stages) == len(infos)), (wanted, False)):
        try:
            names = _flatten(backbone, targets, family)
            steps = _verify(backbone, names, points, infos, kwargs.get("in_chans", 3), layouts)
        except WiringError as error:
            problems.append(str(error))
            continue
        names = [step.name for step in steps]
        points = [(names[_end_of(name, names)], channels) for name, channels in points]  # a container: its end
        if at == "all" and not family:
            points = _without_stem_repeats(points, steps, backbone)
        merges = {name: merge_key(name) for name, _ in points}
        steps = tuple(
            step._replace(merge=merges.get(step.name, ""), feature=step.feature if all_features else -1)
            for step in steps
        )
        tokens = {name: layouts[name] for name, _ in points if name in layouts}  # token stages are not containers
        return Walk(steps, tuple(points), all_features, stem_name(backbone), tokens)
    raise WiringError(f"{backbone_name} ({kind}) cannot take the mask at {at}: {problems[-1]}")


def _token_layouts(backbone: nn.Module, family: Family | None, points: list[tuple[str, int]]) -> dict[str, TokenLayout]:
    """The token layout at each merge point of a token family (none for a CNN)."""
    if not (family and family.tokens):
        return {}
    embed = backbone.get_submodule(family.stem)
    patch = tuple(int(p) for p in embed.patch_size)
    pad = bool(getattr(embed, "dynamic_img_pad", False))
    channels_last = getattr(embed, "output_fmt", None) is not None and str(embed.output_fmt.value) == "NHWC"
    return {
        name: TokenLayout(
            patch_size=patch,
            prefix_tokens=0 if name == family.stem else int(backbone.num_prefix_tokens),
            channels_last=channels_last and name == family.stem,
            pad=pad,
        )
        for name, _ in points
    }


def _merge_points(
    backbone: nn.Module,
    at: str,
    infos: list[dict[str, Any]],
    modules: dict[str, nn.Module],
    family: Family | None = None,
) -> list[tuple[str, int]]:
    kind = type(backbone).__name__
    if family and family.tokens:  # every block has the same stride: l3 is three quarters of the way
        blocks = [_stage_point(info, modules, kind) for info in infos]
        stem = (family.stem, blocks[0][1])
        # A head that pools the class token alone never sees the patch tokens of the last block: no merge there.
        pools_prefix_only = (
            getattr(backbone, "global_pool", "") == "token" and getattr(backbone, "attn_pool", None) is None
        )
        every = blocks[:-1] if pools_prefix_only else blocks
        points = {"l1": [stem], "l3": [blocks[round(3 * len(blocks) / 4) - 1]], "all": [stem, *every]}
        if at not in points:
            raise ValueError(f"unknown merge point {at!r}, expected l1, l3 or all")
        return points[at]
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


def _flatten(backbone: nn.Module, targets: list[str], family: Family | None = None) -> list[str]:
    """The family's steps (else the backbone's children) in order, containers that hold a target replaced by their
    own children."""
    names = list(family.steps) if family else [name for name, _ in backbone.named_children()]
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


def step_callable(backbone: nn.Module, step: Step) -> Any:
    """What a step runs: the backbone's module, or its bound method."""
    return getattr(backbone, step.name) if step.method else backbone.get_submodule(step.name)


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
    layouts: dict[str, TokenLayout],
) -> tuple[Step, ...]:
    """The steps of ``names`` that make ``forward_features``, checked value for value against the backbone's own
    forward."""
    modules = dict(backbone.named_modules())
    steps = [Step(name, method=name not in modules and callable(getattr(backbone, name, None))) for name in names]
    size = _probe_size(backbone)
    x = torch.randn(1, in_chans, *size, generator=_generator())
    token_layout = next(iter(layouts.values()), None)
    grid = (
        TokenLayout(token_layout.patch_size, int(backbone.num_prefix_tokens), pad=token_layout.pad) if layouts else None
    )

    def stage_map(output: Tensor, name: str) -> Tensor:
        """A stage's output as the (B,C,H,W) map that forward_intermediates gives."""
        if grid is None:
            return output
        return feature_map(output, layouts.get(name, grid), size)

    with torch.no_grad():
        expected = backbone.forward_features(x)
        try:
            intermediates = backbone.forward_intermediates(x, indices=len(infos), intermediates_only=True)
        except Exception:  # a backbone without forward_intermediates: its stages are checked by channels
            intermediates = None
        outputs: dict[str, Tensor] = {}
        last_point = max(_end_of(name, names) for name, _ in points) if points else 0
        end = None
        for index, step in enumerate(steps):
            if step.name not in modules and not step.method:
                raise WiringError(f"{step.name!r} is neither a module nor a method of {type(backbone).__name__}")
            try:
                x = step_callable(backbone, step)(x)
            except Exception as error:
                if end is not None:  # past the end, into the head
                    break
                raise WiringError(
                    f"running the model's modules in order fails at {step.name!r} ({type(error).__name__}): its "
                    "forward_features is not a sequence of its modules"
                ) from error
            if not isinstance(x, Tensor):
                if end is not None:
                    break
                raise WiringError(
                    f"{step.name!r} gives a {type(x).__name__}, not a feature map: the modules pass more than a tensor"
                )
            outputs[step.name] = x
            if index >= last_point and _same(x, expected):
                end = index
                break
        if end is None:
            raise WiringError("running the model's modules in order does not reproduce its forward_features")
    while end + 1 < len(names) and isinstance(modules.get(names[end + 1]), nn.Identity):
        outputs[names[end + 1]] = outputs[names[end]]
        end += 1
    features = {}
    for index, info in enumerate(infos):
        stage_end = _end_of(info["module"], names[: end + 1])
        if stage_end is None:
            continue
        features[names[stage_end]] = index
        output = stage_map(outputs[names[stage_end]], names[stage_end])
        name = info["module"]
        if output.shape[1] != info["num_chs"]:
            raise WiringError(f"stage {name!r} gives {output.shape[1]} channels, feature_info says {info['num_chs']}")
        if intermediates is not None and not _same(output, intermediates[index]):
            raise WiringError(f"the output of {name!r} is not the model's intermediate {index} (feature_info)")
    for name, channels in points:
        point_end = names[_end_of(name, names)]
        output = stage_map(outputs[point_end], name if name in layouts else point_end)
        if output.shape[1] != channels:
            raise WiringError(f"{name!r} gives {output.shape[1]} channels, expected {channels}")
    return tuple(step._replace(feature=features.get(step.name, -1)) for step in steps[: end + 1])


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _same(a: Any, b: Any) -> bool:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.shape != b.shape:
        return False
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(b.abs().max())))


def _probe_size(backbone: nn.Module) -> tuple[int, int]:
    embed = getattr(backbone, "patch_embed", None)
    if embed is not None and getattr(embed, "strict_img_size", False) and getattr(embed, "img_size", None):
        return tuple(int(s) for s in embed.img_size)  # the size it was built for (img_size=...), not the config's
    cfg = backbone.pretrained_cfg
    if cfg.get("fixed_input_size"):
        return tuple(cfg["input_size"][1:])
    low = (cfg.get("min_input_size") or (3, 96, 96))[1:]
    return max(96, low[0]), max(96, low[1])


_BATCH_NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


# A weight tensor of the verification copy is a window of a shared random pool, each row shifted by this many
# elements from the one before: random-looking weights, no two rows alike, in memory that does not grow with the
# backbone (a ViT-L's 1.2 GB of weights would be drawn, and held, for every walk derived).
_ROW_SHIFT = 7


def _random_copy(backbone_name: str, kwargs: dict[str, Any]) -> nn.Module:
    """A float32 copy of the backbone on the CPU with random weights for the verification, its matrices and kernels
    overlapping windows of one random pool per scale; built by the family's initialisation instead where it has
    buffers other than batch-norm statistics (index tables, which only its own construction fills)."""
    with torch.device("meta"):
        backbone = timm.create_model(backbone_name, pretrained=False, **kwargs)
    if any(not name.endswith(_BATCH_NORM_STATISTICS) for name, _ in backbone.named_buffers()):
        backbone = timm.create_model(backbone_name, pretrained=False, **kwargs).float().eval()
        _randomise(backbone)
        return backbone
    generator = torch.Generator().manual_seed(0)
    windows: list[tuple[nn.Module, str, tuple[int, ...], int, int]] = []  # module, name, shape, fan-in, span
    for module in backbone.modules():
        for name, parameter in module.named_parameters(recurse=False):
            shape = tuple(parameter.shape)
            if parameter.ndim <= 1 or parameter[0].numel() == 0:
                weight = name.endswith(("weight", "gamma", "scale"))  # norms and layer scales about 1
                values = (1.0 if weight else 0.0) + 0.1 * torch.randn(shape, generator=generator)
                module._parameters[name] = nn.Parameter(values, requires_grad=False)
                continue
            fan_in = parameter[0].numel() if parameter.ndim in (2, 4) else shape[-1]
            windows.append((module, name, shape, fan_in, _ROW_SHIFT * (shape[0] - 1) + parameter[0].numel()))
    pools = {}
    for fan_in in sorted({window[3] for window in windows}):
        span = max(window[4] for window in windows if window[3] == fan_in)
        pools[fan_in] = torch.randn(2 * span, generator=generator) / fan_in**0.5
    for module, name, shape, fan_in, span in windows:
        offset = int(torch.randint(0, span + 1, (), generator=generator))
        inner = torch.empty(shape[1:], device="meta").stride()
        view = pools[fan_in].as_strided(shape, (_ROW_SHIFT, *inner), offset)
        module._parameters[name] = nn.Parameter(view, requires_grad=False)
    for module in backbone.modules():
        for name, buffer in module.named_buffers(recurse=False):
            module._buffers[name] = torch.zeros(buffer.shape, dtype=buffer.dtype)  # statistics: drawn by _randomise
    backbone.eval()
    _randomise(backbone)
    return backbone


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
