"""ROI-attention classifiers (Eppel, arXiv 1812.00291) on any timm backbone.

A model classifies the region of a photo given by a binary mask. It runs a timm backbone on the whole
photo; a side branch turns the mask into an attention map merged into the backbone at the first conv,
at the end of the stride-16 stage, or at every stage (paper Fig. 3), or it hides the background (Fig. 2a),
crops the region's box (Fig. 2b) or ignores the mask (Fig. 3a). Merge points come from what timm knows
about the backbone (its ``first_conv`` and ``feature_info``), so any timm CNN works as a backbone.

Input: the packed ``(B,4,H,W)`` tensor (normalised RGB + mask channel), or ``model(image, mask=mask)``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, get_pretrained_cfg, register_model
from timm.models._input import update_model_args
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..labels import COCO_CLASSES, OPENSURFACES_MATERIALS
from ..layers.crop import crop_to_roi
from ..layers.mask import MASK_RESIZE_MODES, RoiInputError, is_tracing, resize_mask, split_roi_input
from ..layers.merge import MaskAttentionMul, create_merge_layer

__all__ = [
    "BACKBONES",
    "HUB_ORG",
    "VARIANTS",
    "PretrainedWeightsError",
    "RoiAttentionNet",
    "RoiVariant",
    "checkpoint_filter_fn",
]

HUB_ORG = "roi-attention"
"""The Hugging Face Hub organisation that publishes this project's region-trained weights."""


@dataclass(frozen=True)
class RoiVariant:
    """How the mask enters the network.

    ``merge``: ``add``/``mul`` (attention map from a 3x3 conv of the mask), ``gate`` (multiply by the mask).
    ``at``: ``image`` (the input), ``l1`` (first conv), ``l3`` (end of the stride-16 stage), ``all``
    (first conv and every stage end). ``crop``: classify the ROI's box instead of the photo.
    """

    merge: str | None = None
    at: str | None = None
    crop: bool = False
    paper: str = ""
    summary: str = ""


# One entry per variant: adding a variant is one line here.
VARIANTS: dict[str, RoiVariant] = {
    "add_l1": RoiVariant("add", "l1", paper="Fig. 3c", summary="attention map added after the first conv"),
    "mul_l1": RoiVariant("mul", "l1", paper="Fig. 3b", summary="attention map multiplied after the first conv"),
    "add_l3": RoiVariant("add", "l3", paper="Fig. 3e", summary="attention map added after the stride-16 stage"),
    "mul_l3": RoiVariant("mul", "l3", paper="Fig. 3d", summary="attention map multiplied after the stride-16 stage"),
    "add_all": RoiVariant(
        "add", "all", paper="Fig. 3f", summary="attention maps added after the first conv and every stage"
    ),
    "mul_all": RoiVariant(
        "mul", "all", paper="Fig. 3g", summary="attention maps multiplied after the first conv and every stage"
    ),
    "blackout_image": RoiVariant(
        "gate", "image", paper="Fig. 2a", summary="background set to the mean colour (hard attention 1)"
    ),
    "blackout_l1": RoiVariant(
        "gate", "l1", paper="hard attention 2", summary="first conv's output zeroed outside the ROI"
    ),
    "crop": RoiVariant(crop=True, paper="Fig. 2b", summary="the ROI's box cropped, resized and classified"),
    "full": RoiVariant(paper="Fig. 3a", summary="the whole photo classified, mask ignored"),
}

# One entry per backbone: the timm model and its ImageNet weights' tag (re-used as the ROI model's tag).
BACKBONES: dict[str, str] = {
    "resnet18": "tv_in1k",
    "resnet34": "tv_in1k",
    "resnet50": "tv_in1k",
    "resnet101": "tv_in1k",
    "resnet152": "tv_in1k",
    "tf_efficientnet_lite0": "in1k",
}

# Region-trained weights published under HUB_ORG: tag -> (backbones, class names).
REGION_WEIGHTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "coco": (("resnet50",), COCO_CLASSES),
    "opensurfaces": (("resnet50",), OPENSURFACES_MATERIALS),
}

# forward_regions runs the masks of a variant that shares little in groups of at most this many pixels (masks x
# H x W) per forward, by device type. Measured on the CPU (BENCHMARKS.md): at 224x224 groups of 2 are fastest,
# at 128x128 groups of 4-8, at 640x480 one mask at a time; larger groups run slower than one forward per mask.
# Not yet measured on a GPU, where larger batches usually pay: the default keeps memory bounded.
REGION_BATCH_PIXELS: dict[str, int] = {"cpu": 2 * 224 * 224, "default": 32 * 224 * 224}

# The paper's tables compare the variants that merge the mask somewhere: region weights exist for those.
PAPER_VARIANTS = tuple(name for name, variant in VARIANTS.items() if variant.merge)

model_cfgs: dict[str, dict[str, str]] = {
    f"roi_{backbone}_{variant}": dict(backbone=backbone, variant=variant)
    for backbone in BACKBONES
    for variant in VARIANTS
}


def _cfg(backbone: str, **kwargs: Any) -> dict[str, Any]:
    """Pretrained config of an ROI model: the backbone's, describing the photo (the mask comes with ``mask=``).

    ``input_size``, ``mean`` and ``std`` are the photo's, and the eval geometry keeps the whole photo (longer
    side to the input size, padded), so ``timm.data.create_transform(**config)`` gives the image that
    ``model(image, mask=mask)`` takes, and no region is cropped away. A model made with ``in_chans=4`` describes
    the packed input instead (``packed_input_cfg``).
    """
    base = get_pretrained_cfg(f"{backbone}.{BACKBONES[backbone]}")
    cfg = dict(
        input_size=base.input_size,
        interpolation=base.interpolation,
        crop_pct=1.0,
        crop_mode="border",
        mean=base.mean,
        std=base.std,
        num_classes=base.num_classes,
        pool_size=base.pool_size,
        first_conv=f"backbone.{base.first_conv}",
        classifier=f"backbone.{base.classifier}",
        license=base.license,
        paper_name="Classifying a specific image region using convolutional nets with an ROI mask as input",
        paper_ids="arXiv:1812.00291",
        notes=(
            "input: normalised RGB image with mask= (B,1,H,W) in {0,1}, or both packed as 4 channels",
            "mask_resize: max",
        ),
    )
    cfg.update(kwargs)
    return cfg


def _pretrained_cfgs() -> dict[str, dict[str, Any]]:
    cfgs: dict[str, dict[str, Any]] = {}
    for name, model_cfg in model_cfgs.items():
        backbone, variant = model_cfg["backbone"], model_cfg["variant"]
        tag = BACKBONES[backbone]
        cfgs[f"{name}.{tag}"] = _cfg(
            backbone,
            hf_hub_id=get_pretrained_cfg(f"{backbone}.{tag}").hf_hub_id,
            description=f"{backbone}.{tag} ImageNet backbone, ROI side branch at its zero-effect init",
        )
        for region_tag, (backbones, labels) in REGION_WEIGHTS.items():
            if backbone in backbones and variant in PAPER_VARIANTS:
                cfgs[f"{name}.{region_tag}"] = _cfg(
                    backbone,
                    hf_hub_id=f"{HUB_ORG}/{name}.{region_tag}",
                    num_classes=len(labels),
                    label_names=labels,
                    license="mit",
                    description=f"trained to classify {region_tag} regions",
                )
    return cfgs


default_cfgs = generate_default_cfgs(_pretrained_cfgs())


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were asked for and could not be loaded."""


def _merge_key(module_name: str) -> str:
    return module_name.replace(".", "_")


def _has_own_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def first_conv_name(backbone: nn.Module) -> str:
    """The module name of the backbone's first conv (timm's ``first_conv``)."""
    first_conv = backbone.pretrained_cfg.get("first_conv")
    if isinstance(first_conv, (tuple, list)):
        first_conv = first_conv[0]
    if not first_conv:
        raise ValueError(f"{type(backbone).__name__} has no first_conv in its pretrained config")
    return first_conv


def resolve_merge_points(backbone: nn.Module, at: str | None) -> list[tuple[str, int]]:
    """``(module name, channels)`` of each point where the mask merges into ``backbone``.

    ``l1`` is timm's ``first_conv``. Stages are ``feature_info`` entries, less those that only re-expose the
    stem (no parameters of their own, like ResNet's ``act1``, or holding the first conv).
    """
    if at in (None, "image"):
        return []
    first_conv = first_conv_name(backbone)
    stem = (first_conv, backbone.get_submodule(first_conv).out_channels)
    if at == "l1":
        return [stem]
    if at == "l3":
        stride16 = [(info["module"], info["num_chs"]) for info in backbone.feature_info if info["reduction"] == 16]
        if not stride16:
            raise ValueError(f"{type(backbone).__name__} has no stage of stride 16 in its feature_info")
        return [stride16[-1]]
    if at == "all":
        stages = [
            (info["module"], info["num_chs"])
            for info in backbone.feature_info
            if _has_own_parameters(backbone.get_submodule(info["module"]))
            and not first_conv.startswith(info["module"] + ".")
        ]
        return [stem, *stages]
    raise ValueError(f"unknown merge point {at!r}, expected image, l1, l3 or all")


class RoiAttentionNet(nn.Module):
    """A timm backbone that classifies the region of the image given by a mask.

    Args:
        backbone: name of a timm CNN (its ``first_conv`` and ``feature_info`` give the merge points).
        variant: a key of ``VARIANTS``, how the mask enters the network.
        num_classes: classifier outputs.
        in_chans: the channels of the one tensor timm's tools hand the model: 3 (the photo; the mask comes with
            ``mask=``) or 4 (photo and mask packed, for timm's benchmark and export scripts). The forward takes
            both forms either way.
        mask_resize: how the mask is resized to a merge point: ``max`` (default; a one-pixel ROI reaches
            every merge point), ``area`` or ``bilinear`` (the paper author's; small ROIs can vanish).
        crop_margin: for ``crop``, the box grows by this fraction of its size on each side.
        check_inputs: check values (finite image, mask in [0, 1]) on every eager forward.
        **backbone_kwargs: passed to ``timm.create_model`` for the backbone (``drop_rate``, ...).
    """

    def __init__(
        self,
        backbone: str,
        variant: str,
        num_classes: int = 1000,
        in_chans: int = 3,
        mask_resize: str = "max",
        crop_margin: float = 0.1,
        check_inputs: bool = True,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown ROI variant {variant!r}, expected one of {tuple(VARIANTS)}")
        if in_chans not in (3, 4):
            raise ValueError(
                "ROI models take a 3-channel image with mask=, or the image and mask packed as 4 channels: "
                f"in_chans is 3 or 4, got {in_chans}"
            )
        if mask_resize not in MASK_RESIZE_MODES:
            raise ValueError(f"unknown mask_resize {mask_resize!r}, expected one of {MASK_RESIZE_MODES}")
        if not 0 <= crop_margin:
            raise ValueError(f"crop_margin must be >= 0, got {crop_margin}")
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=num_classes, **backbone_kwargs)
        self.backbone_name = backbone
        self.variant_name = variant
        self.variant = VARIANTS[variant]
        self.in_chans = in_chans
        self.num_classes = self.backbone.num_classes
        self.num_features = self.backbone.num_features
        self.head_hidden_size = getattr(self.backbone, "head_hidden_size", self.num_features)
        self.mask_resize = mask_resize
        self.crop_margin = crop_margin
        self.check_inputs = check_inputs
        self.feature_info = [dict(info, module=f"backbone.{info['module']}") for info in self.backbone.feature_info]
        self.grad_checkpointing = False

        self.merge_points = resolve_merge_points(self.backbone, self.variant.at)
        self.roi_branch = nn.ModuleDict()
        for module_name, channels in self.merge_points:
            key = _merge_key(module_name)
            self.roi_branch[key] = create_merge_layer(self.variant.merge, channels)
            self.backbone.get_submodule(module_name).register_forward_hook(partial(_merge_into_output, key))
        if self.variant.at == "image":
            self.roi_branch["image"] = create_merge_layer(self.variant.merge, 3)
        if self.merge_points and not self.shares_trunk:  # by name, so that a replica runs its own conv
            stem = first_conv_name(self.backbone)
            self.backbone.get_submodule(stem).forward = partial(_first_conv_forward, stem)

    # -- the mask's way into the backbone ------------------------------------------------------------

    def split_input(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(image, mask)`` from the packed input or an image and its mask, checked."""
        return split_roi_input(x, mask, check_values=self.check_inputs)

    def _backbone_input(self, image: Tensor, mask: Tensor) -> Tensor:
        if self.variant.crop:
            return crop_to_roi(image, mask, tuple(image.shape[-2:]), self.crop_margin)
        if self.variant.at == "image":
            return self.roi_branch["image"](image, mask)
        return image

    def _run_with_mask(self, mask: Tensor, fn: Any, *args: Any, stem: list[Tensor] | None = None, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` with ``mask`` visible to the merge points, in this thread and this call only."""
        previous = getattr(_calls, "current", None)
        _calls.current = _Call(self, mask, stem)
        try:
            return fn(*args, **kwargs)
        finally:
            _calls.current = previous

    # -- timm model API ------------------------------------------------------------------------------

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Unpooled features of the backbone's last stage."""
        image, mask = self.split_input(x, mask)
        return self._run_with_mask(mask, self.backbone.forward_features, self._backbone_input(image, mask))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.backbone.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Logits ``(B, num_classes)`` for the packed ``(B,4,H,W)`` input, or an image with ``mask=``."""
        return self.forward_head(self.forward_features(x, mask))

    @property
    def shares_trunk(self) -> bool:
        """Whether the regions of one photo share real work: the mask enters after the first stage (``_l3``),
        or not at all (``full``). Elsewhere only the first conv, at most, is shared."""
        if not self.merge_points:
            return self.variant.merge is None and not self.variant.crop
        return self.merge_points[0][0] != first_conv_name(self.backbone)

    def regions_chunk_size(self, count: int, height: int, width: int, device: torch.device | str) -> int:
        """How many masks of one photo ``forward_regions`` runs together by default (see ``REGION_BATCH_PIXELS``)."""
        if self.shares_trunk:
            return count
        budget = REGION_BATCH_PIXELS.get(torch.device(device).type, REGION_BATCH_PIXELS["default"])
        return max(1, min(count, budget // (height * width)))

    def forward_regions(self, image: Tensor, masks: Tensor, chunk_size: int | None = None) -> Tensor:
        """Logits ``(N, num_classes)`` for ``N`` regions of one photo: ``image`` ``(3,H,W)`` or ``(1,3,H,W)``,
        ``masks`` ``(N,H,W)`` or ``(N,1,H,W)``; equal to ``model(image.expand(N, ...), mask=masks)``.

        Everything before the first merge point runs once per group of masks and the rest once per mask. Where
        that shares real work (``shares_trunk``: ``_l3``, ``full``) all masks go together; elsewhere they go in
        groups of ``chunk_size`` (default ``regions_chunk_size``, measured to be at least as fast as one forward
        per region).
        """
        if image.ndim == 3:
            image = image.unsqueeze(0)
        if image.ndim != 4 or image.shape[0] != 1:
            raise RoiInputError(f"forward_regions takes one photo, (3,H,W) or (1,3,H,W), got {tuple(image.shape)}")
        masks = masks.unsqueeze(1) if masks.ndim == 3 else masks
        count = masks.shape[0]
        if count == 0:
            raise RoiInputError("forward_regions got no masks")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        image, masks = self.split_input(image.expand(count, *image.shape[1:]), masks)
        photo = image[:1]
        if not self.merge_points and self.shares_trunk:  # full: the mask is ignored
            return self._forward_regions_together(photo, masks[:1], []).expand(count, -1)
        chunk = chunk_size or self.regions_chunk_size(count, *photo.shape[-2:], photo.device)
        stem: list[Tensor] = []  # the first conv's output for the photo, computed for the first group only
        logits = [self._forward_regions_together(photo, group, stem) for group in masks.split(chunk)]
        return logits[0] if len(logits) == 1 else torch.cat(logits)

    def _forward_regions_together(self, photo: Tensor, masks: Tensor, stem: list[Tensor]) -> Tensor:
        if not self.merge_points:  # the mask changes the input itself (or nothing): nothing to share
            photo = self._backbone_input(photo.expand(masks.shape[0], *photo.shape[1:]), masks)
        # else the merge points expand the photo's features to one per mask
        return self.forward_head(self._run_with_mask(masks, self.backbone.forward_features, photo, stem=stem))

    def forward_intermediates(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Any:
        """The backbone's ``forward_intermediates`` with the ROI merged in (timm ``features_only`` uses it)."""
        image, mask = self.split_input(x, mask)
        return self._run_with_mask(
            mask,
            self.backbone.forward_intermediates,
            self._backbone_input(image, mask),
            indices=indices,
            norm=norm,
            stop_early=stop_early,
            output_fmt=output_fmt,
            intermediates_only=intermediates_only,
        )

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        kept = self.backbone.prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        for module_name, _ in self.merge_points:
            try:
                self.backbone.get_submodule(module_name)
            except AttributeError:
                del self.roi_branch[_merge_key(module_name)]
        return kept

    def get_classifier(self) -> nn.Module:
        return self.backbone.get_classifier()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is None:
            self.backbone.reset_classifier(num_classes)
        else:
            self.backbone.reset_classifier(num_classes, global_pool)
        self.num_classes = num_classes

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each backbone stage in the backward pass instead of storing its activations.

        The stages (``feature_info``) are checkpointed here, with the mask passed in explicitly, because
        the side branch needs the mask again when a stage is recomputed.
        """
        self.grad_checkpointing = enable
        for info in self.backbone.feature_info:
            stage = self.backbone.get_submodule(info["module"])
            if not _has_own_parameters(stage):
                continue
            if enable:  # by name: a replica (nn.DataParallel) copies this and must run its own stage
                stage.forward = partial(_checkpointed_forward, info["module"])
            else:
                stage.__dict__.pop("forward", None)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{name}" for name in inner}


class _Call(NamedTuple):
    """One forward in progress: the model (or replica) that runs it, its mask and, in ``forward_regions``, the
    photo's first-conv output once computed (shared by every group of masks)."""

    model: RoiAttentionNet
    mask: Tensor
    stem: list[Tensor] | None = None


# The forward in progress in each thread. A call sets it for its own duration and restores the caller's, so
# threads sharing a model, re-entrant calls and DataParallel replicas (one thread each) never see another's mask.
_calls = threading.local()


def _current_call() -> _Call:
    call = getattr(_calls, "current", None)
    if call is None:
        raise RuntimeError("the ROI model's backbone ran without a mask: call the ROI model itself, not model.backbone")
    return call


def _first_conv_forward(name: str, x: Tensor) -> Tensor:
    """The first conv's forward where the mask merges right after it: in ``forward_regions`` it runs once for
    the photo, whatever the number of groups of masks."""
    model, _, stem = _current_call()
    if stem:
        return stem[0]
    conv = model.backbone.get_submodule(name)
    output = type(conv).forward(conv, x)
    if stem is not None:
        stem.append(output)
    return output


def _merge_into_output(key: str, module: nn.Module, args: Any, output: Tensor) -> Tensor:
    """Forward hook of a merge point: merge the running call's mask into the module's output."""
    model, mask, _ = _current_call()
    merge = model.roi_branch[key]
    resized = resize_mask(mask, output.shape[-2:], model.mask_resize)
    if output.shape[0] == 1 and mask.shape[0] > 1:  # forward_regions: the shared trunk ends here
        return merge(output.expand(mask.shape[0], *output.shape[1:]), resized)
    if isinstance(merge, MaskAttentionMul) and not module._modules and len(args) == 1:
        # A leaf (the first conv) keeps its input for its own backward: recompute the features from it.
        return merge(output, resized, source=module, source_input=args[0])
    return merge(output, resized)


def _checkpointed_forward(stage_name: str, *args: Any) -> Any:
    """A backbone stage's forward, recomputed in backward with the mask of the call that first ran it."""
    model, mask, _ = _current_call()
    stage = model.backbone.get_submodule(stage_name)
    forward = type(stage).forward
    if not (torch.is_grad_enabled() and model.training):
        return forward(stage, *args)
    if is_tracing():  # a compiler recomputes the stage from its own graph, never this Python: no frame to restore
        return checkpoint(forward, stage, *args, use_reentrant=False)
    return checkpoint(model._run_with_mask, mask, forward, stage, *args, use_reentrant=False)


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: RoiAttentionNet) -> dict[str, Tensor]:
    """Accept a full ROI model state dict, or a plain backbone one (the side branch keeps its init).

    Raises a short ``ValueError`` naming the first missing, unexpected and misshapen tensors when the
    weights do not fit the architecture (the classifier may differ: timm re-initialises it).
    """
    if not any(key.startswith(("backbone.", "roi_branch.")) for key in state_dict):
        state_dict = {f"backbone.{key}": value for key, value in state_dict.items()}
        state_dict.update({k: v for k, v in model.state_dict().items() if k.startswith("roi_branch.")})
    expected = model.state_dict()
    classifier = model.pretrained_cfg.get("classifier") or ""
    problems = {
        "missing": [key for key in expected if key not in state_dict],
        "unexpected": [key for key in state_dict if key not in expected],
        "misshapen": [
            f"{key} {tuple(value.shape)} != {tuple(expected[key].shape)}"
            for key, value in state_dict.items()
            if key in expected and value.shape != expected[key].shape and not key.startswith(f"{classifier}.")
        ],
    }
    if any(problems.values()):
        found = "; ".join(f"{len(v)} {k} (first: {', '.join(v[:3])})" for k, v in problems.items() if v)
        raise ValueError(f"the weights do not fit {model.backbone_name} with variant {model.variant_name}: {found}")
    return state_dict


def packed_input_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """A pretrained config describing the packed ``(4,H,W)`` input: the mask channel is not normalised."""
    return dict(cfg, input_size=(4, *cfg["input_size"][1:]), mean=(*cfg["mean"][:3], 0.0), std=(*cfg["std"][:3], 1.0))


def image_input_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """A pretrained config describing the ``(3,H,W)`` photo (from one that described the packed input)."""
    return dict(cfg, input_size=(3, *cfg["input_size"][1:]), mean=tuple(cfg["mean"][:3]), std=tuple(cfg["std"][:3]))


def _create_roi_model(name: str, pretrained: bool = False, **kwargs: Any) -> RoiAttentionNet:
    built: list[RoiAttentionNet] = []
    # Kept from timm's loader, which would widen the pretrained first conv to in_chans: the photo stays RGB.
    in_chans = kwargs.pop("in_chans", 3)

    def construct(**model_kwargs: Any) -> RoiAttentionNet:
        model_kwargs["in_chans"] = in_chans  # timm passes the config's 3 (the photo's channels)
        built.append(RoiAttentionNet(**model_cfgs[name], **model_kwargs))
        return built[-1]

    try:
        model = build_model_with_cfg(
            construct,
            name,
            pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(feature_cls="getter"),
            **kwargs,
        )
    except Exception as error:
        if not (pretrained and built):
            raise
        raise PretrainedWeightsError(_weights_error_message(name, built[-1], error)) from error
    if isinstance(model, RoiAttentionNet):
        update_model_args(model, mask_resize=model.mask_resize, crop_margin=model.crop_margin)
        if in_chans == 4:
            update_model_args(model, in_chans=4)
            model.pretrained_cfg = packed_input_cfg(model.pretrained_cfg)
        elif len(model.pretrained_cfg.get("mean") or ()) == 4:  # saved when configs described the packed input
            model.pretrained_cfg = image_input_cfg(model.pretrained_cfg)
    return model


def _is_transfer_error(error: BaseException) -> bool:
    """Whether ``error`` (or what it was raised from) is a network failure of an HTTP client."""
    while error is not None:
        if type(error).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3"):
            return True
        error = error.__cause__ or error.__context__
    return False


def _weights_error_message(name: str, model: RoiAttentionNet, error: Exception) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    tag = cfg.get("tag")
    full_name = f"{name}.{tag}" if tag else name
    if cfg.get("source") == "hf-hub":
        full_name = f"hf-hub:{cfg['hf_hub_id']}"
    source = cfg.get("file") or cfg.get("hf_hub_id") or cfg.get("url") or "no weight source"
    if cfg.get("hf_hub_id") and not cfg.get("file") and _is_transfer_error(error):
        return (
            f"downloading the weights of '{full_name}' from the Hub ({source}) failed after huggingface_hub's "
            f"retries ({type(error).__name__}: {error}); a partial download is never used, run the same command again"
        )
    backbone_tag = f"{name}.{BACKBONES[model.backbone_name]}"
    alternatives = [
        "pretrained_cfg_overlay=dict(file='weights.safetensors') for a local file",
        "'local-dir:DIR' or 'hf-hub:ORG/NAME' for a saved ROI model",
        "pretrained=False for random weights",
    ]
    if full_name != backbone_tag:
        alternatives.insert(0, f"'{backbone_tag}' for the ImageNet backbone with the side branch at its init")
    if "safetensor" in type(error).__name__.lower() or "deserializ" in str(error).lower():
        source = f"{source} (the weights file is truncated or not a safetensors file)"
    if cfg.get("hf_hub_id") and not cfg.get("file") and os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        source = f"{source} (HF_HUB_OFFLINE is set: only the local Hub cache was searched)"
    return (
        f"pretrained weights for '{full_name}' could not be loaded from {source}: "
        f"{type(error).__name__}: {error}\nInstead use " + "; ".join(alternatives) + "."
    )


def _register(name: str) -> None:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> RoiAttentionNet:
        return _create_roi_model(name, pretrained=pretrained, **kwargs)

    cfg = model_cfgs[name]
    variant = VARIANTS[cfg["variant"]]
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"ROI model on {cfg['backbone']}: {variant.summary} ({variant.paper})."
    globals()[name] = register_model(entrypoint)


for _name in model_cfgs:
    _register(_name)
