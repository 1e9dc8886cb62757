"""ROI-attention classifiers (Eppel, arXiv 1812.00291) on any timm backbone.

A model classifies the region of a photo given by a binary mask. It runs a timm backbone on the whole
photo; a side branch turns the mask into an attention map merged into the backbone at the first conv,
at the end of the stride-16 stage, or at every stage (paper Fig. 3), or it hides the background (Fig. 2a),
crops the region's box (Fig. 2b) or ignores the mask (Fig. 3a). Merge points come from what timm knows
about the backbone (its ``first_conv`` and ``feature_info``) and are verified when a model is built (``walk.py``):
a timm CNN that cannot take the mask where a variant merges it is refused with ``WiringError``.

Input: ``model(image, mask=mask)``, the packed ``(B,C+1,H,W)`` tensor (image + mask channel), or an image alone,
which makes the whole photo the region.
"""

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, get_pretrained_cfg, register_model
from timm.models._features import feature_take_indices
from timm.models._input import update_model_args
from timm.models._manipulate import checkpoint
from torch import Tensor, nn
from torch.ao.nn.intrinsic import _FusedModule

from ..labels import COCO_CLASSES, OPENSURFACES_MATERIALS
from ..layers.crop import crop_to_roi
from ..layers.head import CosineClassifier
from ..layers.mask import MASK_RESIZE_MODES, RoiInputError, split_roi_input
from ..layers.merge import TokenLayout, create_merge_layer
from .walk import METHOD_MODULES, Step, WiringError, feature_map, merge_key, resolve_walk, step_callable

__all__ = [
    "BACKBONES",
    "HUB_ORG",
    "VARIANTS",
    "PretrainedWeightsError",
    "RoiAttentionNet",
    "RoiVariant",
    "ScriptableRoiNet",
    "WiringError",
    "checkpoint_filter_fn",
    "classifier_names",
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
    "tf_efficientnet_lite1": "in1k",
    "tf_efficientnet_lite2": "in1k",
    "tf_efficientnetv2_b0": "in1k",
    "mobilenetv3_large_100": "ra_in1k",
    "convnext_atto": "d2_in1k",
    "regnetx_002": "pycls_in1k",
    # Vision Transformers: the mask merges into the patch tokens (prefix tokens untouched).
    "vit_small_patch16_224": "augreg_in21k_ft_in1k",
    "deit_small_distilled_patch16_224": "fb_in1k",
    "vit_small_patch14_reg4_dinov2": "lvd142m",
    # OpenAI CLIP image towers (no head: the output is CLIP's image embedding). timm runs the plain names with GELU;
    # the OpenAI weights were trained with QuickGELU, which the quickgelu names run (and Alpha-CLIP converts to).
    "vit_base_patch16_clip_224": "openai",
    "vit_large_patch14_clip_224": "openai",
    "vit_large_patch14_clip_336": "openai",
    "vit_base_patch16_clip_quickgelu_224": "openai",
    "vit_large_patch14_clip_quickgelu_224": "openai",
    "vit_large_patch14_clip_quickgelu_336": "openai",
}

# Region-trained weights published under HUB_ORG: tag -> (backbones, class names).
REGION_WEIGHTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "coco": (("resnet50",), COCO_CLASSES),
    "opensurfaces": (("resnet50",), OPENSURFACES_MATERIALS),
}

# Third-party region weights converted and published under HUB_ORG: (backbone, variant, tag) -> (licence, what).
CONVERTED_WEIGHTS: dict[tuple[str, str, str], tuple[str, str]] = {
    ("vit_base_patch16_clip_quickgelu_224", "add_l1", "alpha_clip_grit20m"): (
        "cc-by-nc-4.0",
        "Alpha-CLIP ViT-B/16 (clip_b16_grit20m_fultune_2xe.pth), output: its image embedding",
    ),
    ("vit_large_patch14_clip_quickgelu_224", "add_l1", "alpha_clip_grit20m"): (
        "cc-by-nc-4.0",
        "Alpha-CLIP ViT-L/14 (clip_l14_grit20m_fultune_2xe.pth), output: its image embedding",
    ),
    ("vit_large_patch14_clip_quickgelu_336", "add_l1", "alpha_clip_grit1m"): (
        "cc-by-nc-4.0",
        "Alpha-CLIP ViT-L/14@336px (clip_l14@336_grit1m_fultune_8xe.pth), output: its image embedding",
    ),
}

# forward_regions runs the masks of a variant that shares little in groups of at most this many pixels (masks x
# H x W) per forward, by device type; 0: one mask a forward. On the CPU, groups of 2-4 masks at 224x224 were up to
# 1.18x one forward per mask on one AMD EPYC run and 0.75-0.81x on another, and 640x480 groups lose: one mask a
# forward is the rule that never loses (it still shares the first conv). Not yet measured on a GPU, where larger
# batches usually pay: the default keeps memory bounded.
REGION_BATCH_PIXELS: dict[str, int] = {"cpu": 0, "default": 32 * 224 * 224}
# Variants that share the trunk run the masks after it together, at most this many at a time: memory stays bounded
# whatever the number of regions, and the trunk still runs once per call.
SHARED_TRUNK_GROUP = 64

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
    classifiers = base.classifier if isinstance(base.classifier, (tuple, list)) else (base.classifier,)
    cfg = dict(
        input_size=base.input_size,
        fixed_input_size=base.fixed_input_size,
        interpolation=base.interpolation,
        crop_pct=1.0,
        crop_mode="border",
        mean=base.mean,
        std=base.std,
        num_classes=base.num_classes,
        pool_size=base.pool_size,
        first_conv=f"backbone.{base.first_conv}",
        classifier=tuple(f"backbone.{c}" for c in classifiers)
        if len(classifiers) > 1
        else f"backbone.{classifiers[0]}",
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
        for (weights_backbone, weights_variant, converted_tag), (licence, what) in CONVERTED_WEIGHTS.items():
            if (backbone, variant) == (weights_backbone, weights_variant):
                cfgs[f"{name}.{converted_tag}"] = _cfg(
                    backbone,
                    hf_hub_id=f"{HUB_ORG}/{name}.{converted_tag}",
                    license=licence,
                    description=what,
                    crop_pct=1.0,
                )
    return cfgs


default_cfgs = generate_default_cfgs(_pretrained_cfgs())


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were asked for and could not be loaded."""


class RoiAttentionNet(nn.Module):
    """A timm backbone that classifies the region of the image given by a mask.

    The forward walks the backbone's modules in order (``walk_steps``, verified against the backbone's own
    ``forward_features`` when the model is built) and merges the mask after the modules at the variant's merge
    points. The mask is an argument all the way: nothing is stored between calls.

    Args:
        backbone: name of a timm CNN (its ``first_conv`` and ``feature_info`` give the merge points).
        variant: a key of ``VARIANTS``, how the mask enters the network.
        num_classes: classifier outputs.
        in_chans: the image's channels (3 for RGB, 1 for a grey photo); the mask comes as ``mask=`` or as one
            more channel of the packed input, and an image alone makes the whole photo the region.
        mask_resize: how the mask is resized to a merge point: ``max`` (default; a one-pixel ROI reaches
            every merge point), ``area`` or ``bilinear`` (the paper author's; small ROIs can vanish).
        crop_margin: for ``crop``, the box grows by this fraction of its size on each side.
        check_inputs: check values (finite image, mask in [0, 1]) on every eager forward.
        text_embed_dim: with a text head (``CosineClassifier``, CLIP's zero-shot classifier): the backbone's head
            gives a ``text_embed_dim``-wide image embedding (a CLIP tower's projection) and the logits are its
            scaled cosine similarities with ``num_classes`` class embeddings. 0: the backbone's head gives the logits.
        **backbone_kwargs: passed to ``timm.create_model`` for the backbone (``drop_rate``, ``device``, ...).
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
        text_embed_dim: int = 0,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown ROI variant {variant!r}, expected one of {tuple(VARIANTS)}")
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans is the image's channel count (3 for RGB, 1 for grey), got {in_chans!r}")
        if mask_resize not in MASK_RESIZE_MODES:
            raise ValueError(f"unknown mask_resize {mask_resize!r}, expected one of {MASK_RESIZE_MODES}")
        if not 0 <= crop_margin:
            raise ValueError(f"crop_margin must be >= 0, got {crop_margin}")
        self.variant = VARIANTS[variant]
        factory = {key: backbone_kwargs[key] for key in ("device", "dtype") if key in backbone_kwargs}
        if self.variant.at in ("l1", "l3", "all"):  # before the backbone: a backbone that cannot be wired is refused
            walk = resolve_walk(backbone, self.variant.at, dict(backbone_kwargs, in_chans=in_chans))
        self.backbone = timm.create_model(
            backbone, pretrained=False, num_classes=text_embed_dim or num_classes, in_chans=in_chans, **backbone_kwargs
        )
        self.text_head = CosineClassifier(text_embed_dim, num_classes, **factory) if text_embed_dim else None
        self.backbone_name = backbone
        self.variant_name = variant
        self.in_chans = in_chans
        self.num_classes = num_classes if text_embed_dim else self.backbone.num_classes
        self.num_features = self.backbone.num_features
        self.head_hidden_size = getattr(self.backbone, "head_hidden_size", self.num_features)
        self.mask_resize = mask_resize
        self.crop_margin = crop_margin
        self.check_inputs = check_inputs
        self.grad_checkpointing = False
        self.roi_branch = nn.ModuleDict()
        self.walk_steps: tuple[Step, ...] = ()
        self.walk_stem = ""
        self.features_walked = False
        self.merge_channels: dict[str, int] = {}
        self.token_layouts: dict[str, TokenLayout] = {}
        if self.variant.at in ("l1", "l3", "all"):
            self.walk_steps, self.features_walked, self.walk_stem = walk.steps, walk.features_walked, walk.stem
            self.merge_channels, self.token_layouts = dict(walk.merges), dict(walk.tokens)
            for name, channels in walk.merges:
                self.roi_branch[merge_key(name)] = create_merge_layer(
                    self.variant.merge, channels, mask_resize, tokens=walk.tokens.get(name), **factory
                )
        elif self.variant.at == "image":
            self.roi_branch["image"] = create_merge_layer(self.variant.merge, in_chans, mask_resize, **factory)
        self.feature_info = self._feature_info()

    def _feature_info(self) -> list[dict[str, Any]]:
        """timm's ``feature_info`` of the stages the backbone still has, each named by the module whose output its
        features are (torch.fx node names: after a merge, the merged map)."""
        merged = {step.name: step.merge for step in self.walk_steps if step.merge}
        modules = dict(self.backbone.named_modules())
        return [
            dict(
                info,
                module=f"roi_branch.{merged[info['module']]}"
                if info["module"] in merged
                else f"backbone.{info['module']}",
            )
            for info in self.backbone.feature_info
            if info["module"] in modules
        ]

    # -- the walk: the backbone's modules in order, the mask merged after the merge points --------------------

    def split_input(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(image, mask)`` from the packed input, an image and its mask, or an image alone (the whole photo)."""
        return split_roi_input(x, mask, self.in_chans, self.check_inputs)

    def _backbone_input(self, image: Tensor, mask: Tensor) -> Tensor:
        if self.variant.crop:
            return crop_to_roi(image, mask, image.shape[-2:], self.crop_margin)
        if self.variant.at == "image":
            return self.roi_branch["image"](image, mask)
        return image

    def _run_step(self, step: Step, x: Tensor, mask: Tensor) -> Tensor:
        module = step_callable(self.backbone, step)
        if self.grad_checkpointing and self._checkpointed(step) and self.training and torch.is_grad_enabled():
            if not torch.fx._symbolic_trace.is_fx_symbolic_tracing():
                return self._merge(step, module, x, checkpoint(module, x), mask, writable=True)
        return self._merge(step, module, x, module(x), mask, writable=True)

    def _checkpointed(self, step: Step) -> bool:
        """Whether gradient checkpointing recomputes the step: a stage with parameters (not a re-exposed stem
        activation, which may work in place)."""
        if step.feature < 0 or step.method:
            return False
        return next(self.backbone.get_submodule(step.name).parameters(), None) is not None

    def _merge(
        self, step: Step, module: Any, module_input: Tensor, features: Tensor, mask: Tensor, writable: bool = False
    ) -> Tensor:
        """``mask`` merged into ``features == module(module_input)`` if the step merges; ``writable``: the walk
        keeps no other reference to ``features`` (the merge may add into them in eager inference)."""
        if not step.merge:
            return features
        self._refuse_fused(step, module)
        return self.roi_branch[step.merge].forward_after(module, module_input, features, mask, writable)

    def _refuse_fused(self, step: Step, module: nn.Module) -> None:
        if isinstance(module, _FusedModule):
            raise RuntimeError(
                f"backbone.{step.name} was fused with the layers after it ({type(module).__name__}), but the ROI "
                f"mask merges right after {step.name} (variant {self.variant_name}): fuse only layers within a "
                "stage, or after the last merge point"
            )

    def _walk(
        self,
        x: Tensor,
        mask: Tensor,
        start: int = 0,
        stop: int | None = None,
        take: Sequence[int] = (),
        taken: list[Tensor] | None = None,
    ) -> Tensor:
        """The walk from step ``start`` to ``stop``: every forward (features, intermediates, regions) runs it. The
        outputs of the ``feature_info`` stages in ``take`` are appended to ``taken``."""
        for step in self.walk_steps[start:stop]:
            x = self._run_step(step, x, mask)
            if taken is not None and step.feature in take:
                taken.append(x)
        return x

    # -- timm model API ------------------------------------------------------------------------------

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Unpooled features of the backbone's last stage."""
        image, mask = self.split_input(x, mask)
        x = self._backbone_input(image, mask)
        if not self.walk_steps:  # the mask changes the input (or nothing): the backbone's own forward
            return self.backbone.forward_features(x)
        return self._walk(x, mask)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.backbone.forward_head(x, pre_logits=pre_logits)
        return x if pre_logits or self.text_head is None else self.text_head(x)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Logits ``(B, num_classes)`` for an image with ``mask=``, the packed input, or an image alone (the whole
        photo as the region)."""
        return self.forward_head(self.forward_features(x, mask))

    @property
    def merge_points(self) -> list[tuple[str, int]]:
        """``(backbone module name, channels)`` of each point the mask merges after, in order."""
        return [(step.name, self.merge_channels[step.name]) for step in self.walk_steps if step.merge]

    @property
    def shares_trunk(self) -> bool:
        """Whether the regions of one photo share real work: the mask enters after the first stage (``_l3``),
        or not at all (``full``). Elsewhere only the first conv, at most, is shared."""
        if not self.walk_steps:
            return self.variant.merge is None and not self.variant.crop
        first = next(step for step in self.walk_steps if step.merge)
        return first.name != self.walk_stem

    def regions_chunk_size(self, count: int, height: int, width: int, device: torch.device | str) -> int:
        """How many masks of one photo ``forward_regions`` runs together by default (see ``REGION_BATCH_PIXELS``)."""
        if self.shares_trunk:
            return min(count, SHARED_TRUNK_GROUP)
        budget = REGION_BATCH_PIXELS.get(torch.device(device).type, REGION_BATCH_PIXELS["default"])
        return max(1, min(count, budget // (height * width)))

    def forward_regions(self, image: Tensor, masks: Tensor, chunk_size: int | None = None) -> Tensor:
        """Logits ``(N, num_classes)`` for ``N`` regions of one photo: ``image`` ``(C,H,W)`` or ``(1,C,H,W)``,
        ``masks`` ``(N,H,W)`` or ``(N,1,H,W)``; equal to ``model(image.expand(N, ...), mask=masks)``.

        The walk up to the first merge point runs once for the photo, the rest once per mask. Where that shares
        real work (``shares_trunk``: ``_l3``, ``full``) the masks go ``SHARED_TRUNK_GROUP`` at a time; elsewhere
        in groups of ``chunk_size`` (default ``regions_chunk_size``). Either way memory is bounded whatever ``N``,
        beyond the masks themselves.
        """
        image, masks = self.regions_input(image, masks)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        chunk = chunk_size or self.regions_chunk_size(masks.shape[0], *image.shape[-2:], image.device)
        return self._regions_logits(image, masks.split(chunk))

    def forward_region_group(self, image: Tensor, masks: Tensor) -> Tensor:
        """``forward_regions`` with every mask in one group: the graph that ``torch.compile`` and ONNX export take
        (the number of masks a dynamic dimension)."""
        image, masks = self.regions_input(image, masks)
        return self._regions_logits(image, (masks,))

    def regions_input(self, image: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """The photo expanded to ``(N,C,H,W)`` (a view) and the masks ``(N,1,H,W)`` of ``forward_regions``'s
        input, checked as ``forward`` checks its input (``RoiInputError``)."""
        if image.ndim == 3:
            image = image.unsqueeze(0)
        if image.ndim != 4 or image.shape[0] != 1:
            raise RoiInputError(f"forward_regions takes one photo, (C,H,W) or (1,C,H,W), got {tuple(image.shape)}")
        masks = masks.unsqueeze(1) if masks.ndim == 3 else masks
        if masks.shape[0] == 0:
            raise RoiInputError("forward_regions got no masks")
        return self.split_input(image.expand(masks.shape[0], *image.shape[1:]), masks)

    def _regions_logits(self, image: Tensor, groups: Sequence[Tensor]) -> Tensor:
        """Logits of the mask ``groups`` of one photo (``image`` expanded to their number), the trunk shared."""
        photo = image[:1]
        if not self.walk_steps and self.shares_trunk:  # full: the mask is ignored
            return self.forward_head(self.backbone.forward_features(photo)).expand(image.shape[0], -1)
        if not self.walk_steps:  # the mask changes the input itself: nothing to share
            logits = [
                self.forward_head(self.backbone.forward_features(self._backbone_input(image[: m.shape[0]], m)))
                for m in groups
            ]
            return logits[0] if len(logits) == 1 else torch.cat(logits)
        first = next(index for index, step in enumerate(self.walk_steps) if step.merge)
        step = self.walk_steps[first]
        trunk_input = self._walk(photo, groups[0][:1], stop=first)
        module = step_callable(self.backbone, step)
        trunk = module(trunk_input)  # once for the photo, whatever the number of groups
        logits = []
        for group in groups:
            size = group.shape[0]
            inputs = trunk_input.expand(size, *trunk_input.shape[1:])
            x = self._merge(step, module, inputs, trunk.expand(size, *trunk.shape[1:]), group)
            logits.append(self.forward_head(self._walk(x, group, start=first + 1)))
        return logits[0] if len(logits) == 1 else torch.cat(logits)

    def forward_intermediates(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The features at ``feature_info`` stages, with the ROI merged in (timm's ``features_only`` uses it)."""
        image, mask = self.split_input(x, mask)
        x = self._backbone_input(image, mask)
        if not self.walk_steps:
            return self.backbone.forward_intermediates(
                x,
                indices=indices,
                norm=norm,
                stop_early=stop_early,
                output_fmt=output_fmt,
                intermediates_only=intermediates_only,
            )
        tokens = bool(self.token_layouts)
        if output_fmt not in (("NCHW", "NLC") if tokens else ("NCHW",)):
            raise ValueError(f"{self.backbone_name} gives NCHW intermediates, got output_fmt={output_fmt!r}")
        if not self.features_walked:
            raise WiringError(
                f"the stages of {self.backbone_name} are not all on the walk of variant {self.variant_name}: "
                "its intermediates cannot be taken with the mask merged in"
            )
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        last = max(index for index, step in enumerate(self.walk_steps) if step.feature == max_index)
        stop = last + 1 if (stop_early or intermediates_only) else None
        intermediates: list[Tensor] = []
        x = self._walk(x, mask, stop=stop, take=take_indices, taken=intermediates)
        if tokens:  # timm's ViT: every intermediate through the final norm when asked, the patch grid alone
            layout = self._grid_layout()
            if norm:
                intermediates = [self.backbone.norm(y) for y in intermediates]
            if output_fmt == "NLC":
                intermediates = [y[:, layout.prefix_tokens :] for y in intermediates]
            else:
                intermediates = [feature_map(y, layout, image.shape[-2:]).contiguous() for y in intermediates]
        elif norm and max_index == len(self.feature_info) - 1:
            intermediates[-1] = self._final_norm(intermediates[-1], last)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def _grid_layout(self) -> TokenLayout:
        """Where a token family's stage outputs hold the patch grid (after the prefix tokens)."""
        stem = self.token_layouts.get(self.walk_stem) or next(iter(self.token_layouts.values()))
        return TokenLayout(stem.patch_size, int(self.backbone.num_prefix_tokens), pad=stem.pad)

    def _final_norm(self, x: Tensor, last: int) -> Tensor:
        """The normalisation layers that follow the last stage in ``forward_features`` (timm's ``norm=True``)."""
        for step in self.walk_steps[last + 1 :]:
            module = self.backbone.get_submodule(step.name)
            if not isinstance(module, _NORM_LAYERS):
                break
            x = module(x)
        return x

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """timm's pruning of the stages after ``indices``; their merge points go with them."""
        kept = self.backbone.prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        steps = []
        for step in self.walk_steps:
            if step.method:
                steps.append(step)
                continue
            try:
                module = self.backbone.get_submodule(step.name)
            except AttributeError:
                module = None
            pruned = (
                module is None or isinstance(module, nn.Identity) or (isinstance(module, nn.Sequential) and not module)
            )
            if step.merge and not pruned:
                steps.append(step)
            elif module is not None:
                steps.append(step._replace(merge=""))
        for key in set(self.roi_branch) - {step.merge for step in steps} - {"image"}:
            del self.roi_branch[key]
        self.walk_steps = tuple(steps)
        self.feature_info = self._feature_info()[: max(kept) + 1]  # the stages pruned (a ResNet's as Identity) go
        if prune_head:
            self._drop_text_head()
        self.num_classes = self.num_classes if self.text_head is not None else self.backbone.num_classes
        self.num_features = self.backbone.num_features
        self.head_hidden_size = getattr(self.backbone, "head_hidden_size", self.num_features)
        return kept

    def get_classifier(self) -> nn.Module:
        return self.text_head if self.text_head is not None else self.backbone.get_classifier()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier of ``num_classes`` outputs on the backbone (a text head goes with the old classes)."""
        self._drop_text_head()
        if global_pool is None:
            self.backbone.reset_classifier(num_classes)
        else:
            self.backbone.reset_classifier(num_classes, global_pool)
        self.num_classes = num_classes
        self.head_hidden_size = getattr(self.backbone, "head_hidden_size", self.num_features)

    def _drop_text_head(self) -> None:
        if self.text_head is not None:
            self.text_head = None
            update_model_args(self, text_embed_dim=0)
            if getattr(self, "pretrained_cfg", None) is not None:
                self.pretrained_cfg = dict(self.pretrained_cfg, classifier="backbone.head")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each backbone stage in the backward pass instead of storing its activations (the mask is
        merged outside the checkpointed stages, so recomputation needs nothing but the stage's input). Raises
        ``RuntimeError`` where the walk has no stage to recompute, rather than silently doing nothing."""
        if enable and self.walk_steps and not any(self._checkpointed(step) for step in self.walk_steps):
            raise RuntimeError(
                f"gradient checkpointing: the walk of {self.backbone_name} for {self.variant_name} has no stage "
                "with parameters to recompute (its feature_info stages are not steps of the walk)"
            )
        self.grad_checkpointing = enable
        self.backbone.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter groups of the backbone (``backbone.`` names), and the side branch as one more."""
        groups = {key: _prefixed(value) for key, value in self.backbone.group_matcher(coarse=coarse).items()}
        return dict(groups, roi_branch=r"^roi_branch\.")

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{name}" for name in inner}

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name for ``pretrained_cfg`` (the same dict, never a stale copy)."""
        return self.pretrained_cfg

    @default_cfg.setter
    def default_cfg(self, cfg: dict[str, Any]) -> None:
        self.pretrained_cfg = cfg

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script`` compiles: the same modules, with the walk's steps in a ``ModuleList``."""
        return ScriptableRoiNet(self)


_NORM_LAYERS = (nn.Identity, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _prefixed(matcher: Any) -> Any:
    """A timm group matcher (a regex, or a list of ``(regex, ordinal)``) for names under ``backbone.``."""
    if isinstance(matcher, str):
        return r"^backbone\.(?:" + matcher.removeprefix("^").replace("|^", "|") + ")"
    return [(_prefixed(pattern), ordinal) for pattern, ordinal in matcher]


class _NoMerge(nn.Module):
    """A step with no merge point after it (TorchScript walks steps and merges side by side)."""

    def forward(self, features: Tensor, mask: Tensor) -> Tensor:
        return features


class ScriptableRoiNet(nn.Module):
    """``RoiAttentionNet`` as TorchScript compiles it (``torch.jit.script(model)`` builds one): the same modules
    and parameters, the walk's steps and merges as two ``ModuleList``s walked side by side."""

    __constants__ = ("crop", "crop_margin", "has_text_head", "in_chans", "walked")

    def __init__(self, model: RoiAttentionNet) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.in_chans = model.in_chans
        self.crop = model.variant.crop
        self.crop_margin = float(model.crop_margin)
        self.walked = bool(model.walk_steps)
        self.num_classes = model.num_classes
        self.pretrained_cfg = model.pretrained_cfg
        self.image_merge = model.roi_branch["image"] if "image" in model.roi_branch else _NoMerge()
        self.has_text_head = model.text_head is not None
        self.text_head = model.text_head if model.text_head is not None else nn.Identity()
        steps = [
            METHOD_MODULES[step.name](model.backbone) if step.method else model.backbone.get_submodule(step.name)
            for step in model.walk_steps
        ]
        for step, module in zip(model.walk_steps, steps, strict=True):
            if step.merge:
                model._refuse_fused(step, module)
        self.steps = nn.ModuleList(steps)
        self.merges = nn.ModuleList(
            [model.roi_branch[step.merge] if step.merge else _NoMerge() for step in model.walk_steps]
        )

    @torch.jit.export
    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        image, full_mask = split_roi_input(x, mask, self.in_chans, False)
        if self.crop:
            x = crop_to_roi(image, full_mask, image.shape[-2:], self.crop_margin)
        else:
            x = self.image_merge(image, full_mask)
        if not self.walked:
            return self.backbone.forward_features(x)
        for step, merge in zip(self.steps, self.merges):  # noqa: B905 (TorchScript's zip has no strict)
            x = merge(step(x), full_mask)
        return x

    @torch.jit.export
    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.backbone.forward_head(x, pre_logits=pre_logits)
        if pre_logits or not self.has_text_head:
            return x
        return self.text_head(x)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward_head(self.forward_features(x, mask), False)


torch.fx.wrap("split_roi_input")
torch.fx.wrap("crop_to_roi")


def classifier_names(cfg: dict[str, Any]) -> tuple[str, ...]:
    """The classifier modules a pretrained config names (one, or DeiT's two: ``head`` and ``head_dist``)."""
    classifier = cfg.get("classifier") or ()
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: RoiAttentionNet) -> dict[str, Tensor]:
    """Accept a full ROI model state dict, or a plain backbone one (the side branch keeps its init).

    Raises a short ``ValueError`` naming the first missing, unexpected and misshapen tensors when the
    weights do not fit the architecture (the classifier may differ, or be absent where the class count differs:
    timm re-initialises or drops it;
    the first conv's input channels may differ: timm adapts them to ``in_chans``).
    """
    if not any(key.startswith(("backbone.", "roi_branch.")) for key in state_dict):
        # The backbone family's own filter first (a ViT's position embedding resampled to its size, OpenAI CLIP's
        # layout converted), as timm loads the plain model.
        family_filter = getattr(sys.modules[type(model.backbone).__module__], "checkpoint_filter_fn", None)
        if family_filter is not None:
            state_dict = family_filter(state_dict, model.backbone)
        state_dict = {f"backbone.{key}": value for key, value in state_dict.items()}
        state_dict.update({k: v for k, v in model.state_dict().items() if k.startswith("roi_branch.")})
    expected = model.state_dict()
    heads = tuple(f"{name}." for name in classifier_names(model.pretrained_cfg))
    first_conv = f"{model.pretrained_cfg.get('first_conv') or ''}.weight"

    def fits(key: str, value: Tensor) -> bool:
        if value.shape == expected[key].shape or (heads and key.startswith(heads)):
            return True
        return key == first_conv and value.shape[0] == expected[key].shape[0] and model.in_chans != value.shape[1]

    # A checkpoint for another class count (or none: DINOv2's) has its classifier left out; timm initialises it.
    new_head = heads and model.num_classes != model.pretrained_cfg.get("num_classes")
    problems = {
        "missing": [key for key in expected if key not in state_dict and not (new_head and key.startswith(heads))],
        "unexpected": [key for key in state_dict if key not in expected and not (heads and key.startswith(heads))],
        "misshapen": [
            f"{key} {tuple(value.shape)} != {tuple(expected[key].shape)}"
            for key, value in state_dict.items()
            if key in expected and not fits(key, value)
        ],
    }
    if any(problems.values()):
        found = "; ".join(f"{len(v)} {k} (first: {', '.join(v[:3])})" for k, v in problems.items() if v)
        raise ValueError(f"the weights do not fit {model.backbone_name} with variant {model.variant_name}: {found}")
    return {key: value for key, value in state_dict.items() if key in expected}


def _image_cfg(cfg: dict[str, Any], in_chans: int) -> dict[str, Any]:
    """The pretrained config for an image of ``in_chans`` channels: one mean and std per channel (a grey photo
    takes the RGB means' mean, as timm's first-conv adaptation sums the RGB filters)."""
    mean, std = tuple(cfg["mean"][:3]), tuple(cfg["std"][:3])
    if in_chans == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    else:
        mean, std = tuple(mean[i % 3] for i in range(in_chans)), tuple(std[i % 3] for i in range(in_chans))
    return dict(cfg, input_size=(in_chans, *cfg["input_size"][1:]), mean=mean, std=std)


def _is_packed_cfg(cfg: dict[str, Any]) -> bool:
    """Whether a saved config describes the packed RGB + mask input (saved before ``in_chans`` meant the image's
    channels): four channels, the fourth with mean 0 and std 1."""
    mean, std = cfg.get("mean") or (), cfg.get("std") or ()
    return len(mean) == 4 and len(std) == 4 and mean[3] == 0.0 and std[3] == 1.0


_FEATURE_CLASSES = ("getter", "fx")


def _create_roi_model(name: str, pretrained: bool = False, **kwargs: Any) -> RoiAttentionNet:
    built: list[RoiAttentionNet] = []
    saved_cfg = kwargs.get("pretrained_cfg")
    if kwargs.get("in_chans", 4) == 4 and isinstance(saved_cfg, dict) and _is_packed_cfg(saved_cfg):
        kwargs["in_chans"] = 3  # a folder saved when in_chans=4 meant the packed input
    feature_cls = kwargs.get("feature_cls", (kwargs.get("feature_cfg") or {}).get("feature_cls", "getter"))
    if kwargs.get("features_only") and isinstance(feature_cls, str) and feature_cls not in _FEATURE_CLASSES:
        raise ValueError(
            f"ROI models give features with feature_cls 'getter' (default) or 'fx', got {feature_cls!r}: hooks "
            "and module dicts cannot pass the mask to the merge points"
        )

    feature_cfg: dict[str, Any] = dict(feature_cls="getter")
    if kwargs.get("features_only") and "out_indices" not in kwargs:
        with torch.device("meta"):  # every stage the backbone has (timm's default assumes five)
            stages = len(timm.create_model(model_cfgs[name]["backbone"]).feature_info)
        feature_cfg["out_indices"] = tuple(range(stages))

    def construct(**model_kwargs: Any) -> RoiAttentionNet:
        built.append(RoiAttentionNet(**model_cfgs[name], **model_kwargs))
        return built[-1]

    try:
        model = build_model_with_cfg(
            construct,
            name,
            pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=feature_cfg,
            **kwargs,
        )
    except Exception as error:
        if not (pretrained and built):
            raise
        raise PretrainedWeightsError(_weights_error_message(name, built[-1], error)) from error
    if isinstance(model, RoiAttentionNet):
        update_model_args(model, mask_resize=model.mask_resize, crop_margin=model.crop_margin)
        if _is_packed_cfg(model.pretrained_cfg):  # saved when configs described the packed input
            model.pretrained_cfg = _image_cfg(model.pretrained_cfg, 3)
        if model.pretrained_cfg["input_size"][0] != model.in_chans:
            model.pretrained_cfg = _image_cfg(model.pretrained_cfg, model.in_chans)
        embed = getattr(model.backbone, "patch_embed", None)
        if getattr(embed, "strict_img_size", False) and tuple(embed.img_size) != model.pretrained_cfg["input_size"][1:]:
            # A Vision Transformer built for another size (img_size=) takes photos of that size only.
            model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(model.in_chans, *embed.img_size))
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
