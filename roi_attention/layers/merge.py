"""Side-branch modules that merge a resized ROI mask into a feature map."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mask import is_tracing


class MaskAttentionAdd(nn.Conv2d):
    """``features + conv(mask)``: a 3x3 conv turns the mask into an attention map (paper, Fig. 3c/e/f).

    Weight and bias start at zero, so the branch has no effect until it is trained.
    """

    bias_init = 0.0

    def __init__(self, channels: int) -> None:
        super().__init__(1, channels, kernel_size=3, stride=1, padding=1, bias=True)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.constant_(self.bias, self.bias_init)

    def attention(self, mask: Tensor) -> Tensor:
        """The attention map for a mask already resized to the feature map's size."""
        return self._conv_forward(mask.to(self.weight.dtype), self.weight, self.bias)

    def forward(self, features: Tensor, mask: Tensor) -> Tensor:
        return features + self.attention(mask)


class _MultiplyByAttention(torch.autograd.Function):
    """``features * conv2d(mask, weight, bias, padding=1)`` that keeps only what backward cannot do without.

    The attention map (as many channels as the features) is recomputed in backward from the one-channel mask.
    Given ``source``, the leaf module that produced ``features`` from ``source_input`` (the stem conv, whose
    input its own backward keeps anyway), the features are recomputed from that input too instead of kept.
    Recomputation runs under the forward's autocast state, so the gradients are autograd's for the plain product.
    """

    @staticmethod
    def forward(
        features: Tensor,
        mask: Tensor,
        weight: Tensor,
        bias: Tensor,
        source: nn.Module | None = None,
        source_input: Tensor | None = None,
    ) -> Tensor:
        return features * F.conv2d(mask, weight, bias, padding=1)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        features, mask, weight, bias, source, source_input = inputs
        ctx.source = source
        ctx.save_for_backward(features if source is None else source_input, mask, weight, bias)
        ctx.device_type = features.device.type
        ctx.autocast = torch.amp.is_autocast_available(ctx.device_type) and torch.is_autocast_enabled(ctx.device_type)
        ctx.autocast_dtype = torch.get_autocast_dtype(ctx.device_type) if ctx.autocast else None

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        kept, mask, weight, bias = ctx.saved_tensors
        need_features, _, need_weight, need_bias, _, _ = ctx.needs_input_grad
        leaves = [weight.detach().requires_grad_(need_weight), bias.detach().requires_grad_(need_bias)]
        autocast = torch.autocast(ctx.device_type, dtype=ctx.autocast_dtype) if ctx.autocast else nullcontext()
        with autocast:
            with torch.no_grad():
                features = kept if ctx.source is None else type(ctx.source).forward(ctx.source, kept)
            with torch.enable_grad():
                attention = F.conv2d(mask, *leaves, padding=1)
        grad_features = grad_output * attention.detach() if need_features else None
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        grads = iter(torch.autograd.grad(attention, wanted, grad_output * features) if wanted else ())
        grad_weight = next(grads) if need_weight else None
        grad_bias = next(grads) if need_bias else None
        return grad_features, None, grad_weight, grad_bias, None, None


class MaskAttentionMul(MaskAttentionAdd):
    """``features * conv(mask)`` (paper, Fig. 3b/d/g); weight 0 and bias 1 make it start as identity.

    In training the attention map is not kept for backward but recomputed from the small mask; given
    ``source`` (a leaf module, such as the first conv, and its input: ``features == source(source_input)``) the
    features are recomputed too.
    """

    bias_init = 1.0

    def forward(
        self,
        features: Tensor,
        mask: Tensor,
        source: nn.Module | None = None,
        source_input: Tensor | None = None,
    ) -> Tensor:
        mask = mask.to(self.weight.dtype)
        if torch.is_grad_enabled() and not is_tracing():  # compilers plan their own recomputation
            if source_input is None:
                source = None
            return _MultiplyByAttention.apply(features, mask, self.weight, self.bias, source, source_input)
        return features * self.attention(mask)


class MaskGate(nn.Module):
    """``features * mask``: hard attention, everything outside the ROI becomes zero (no parameters)."""

    def __init__(self, channels: int | None = None) -> None:
        super().__init__()

    def forward(self, features: Tensor, mask: Tensor) -> Tensor:
        return features * mask.to(features.dtype)


MERGE_LAYERS: dict[str, type[nn.Module]] = {
    "add": MaskAttentionAdd,
    "mul": MaskAttentionMul,
    "gate": MaskGate,
}


def create_merge_layer(merge: str, channels: int) -> nn.Module:
    """The side-branch module for merge mode ``merge`` into a feature map of ``channels`` channels."""
    if merge not in MERGE_LAYERS:
        raise ValueError(f"unknown merge mode {merge!r}, expected one of {tuple(MERGE_LAYERS)}")
    return MERGE_LAYERS[merge](channels)
