"""Side-branch modules that merge the ROI mask into a feature map.

Each takes the features and the mask at the input's resolution, ``(B,1,H,W)``, and resizes the mask to the
features itself (``mask_resize``). Their ``forward`` is TorchScript-compatible; ``torch.fx`` traces through them
(their nodes are named after them, ``roi_branch.KEY.add``) with the mask resize as a leaf function.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mask import is_tracing, resize_mask

torch.fx.wrap("resize_mask")


class _MergeAfter:
    """``forward_after``: the merge applied to a module's output, given that module and its input (eager)."""

    def forward_after(
        self, module: Any, module_input: Tensor, features: Tensor, mask: Tensor, writable: bool = False
    ) -> Tensor:
        """The merge of ``mask`` into ``features == module(module_input)``; ``writable``: the caller keeps no
        other reference to ``features``, so a merge may write its result there (eager inference only)."""
        return self(features, mask)


@torch.jit.unused
def _eager_inference(features: Tensor) -> bool:
    """Whether this forward is eager inference on real data: no autograd, no tracer, not the meta device."""
    # the tracer first: under torch.fx the features are a proxy, whose attributes cannot decide a branch
    return not torch.is_grad_enabled() and not is_tracing() and features.device.type != "meta"


@torch.jit.unused
def _unseen(module: Any, module_input: Tensor, features: Tensor) -> bool:
    """Whether ``features``, just returned by ``module(module_input)``, is seen by nothing else: no forward hook
    (the module's or a global one) was handed it, and it is not ``module_input`` or a view of it."""
    if getattr(module, "_forward_hooks", None) or nn.modules.module._global_forward_hooks:
        return False
    return features.untyped_storage().data_ptr() != module_input.untyped_storage().data_ptr()


class MaskAttentionAdd(_MergeAfter, nn.Conv2d):
    """``features + conv(mask)``: a 3x3 conv turns the mask into an attention map (paper, Fig. 3c/e/f).

    Weight and bias start at zero, so the branch has no effect until it is trained.
    """

    bias_init = 0.0

    def __init__(self, channels: int, mask_resize: str = "max", device: Any = None, dtype: Any = None) -> None:
        super().__init__(1, channels, kernel_size=3, stride=1, padding=1, bias=True, device=device, dtype=dtype)
        self.mask_resize = mask_resize

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.constant_(self.bias, self.bias_init)

    def attention(self, mask: Tensor) -> Tensor:
        """The attention map for a mask already resized to the feature map's size."""
        return self._conv_forward(mask.to(self.weight.dtype), self.weight, self.bias)

    def forward(self, features: Tensor, mask: Tensor, writable: bool = False) -> Tensor:
        """``features + conv(mask)``; ``writable``: the sum may be written into ``features`` (eager inference)."""
        mask = resize_mask(mask, features.shape[-2:], self.mask_resize)
        if not torch.jit.is_scripting():
            if _eager_inference(features):
                return self._add_attention(features, mask, writable)
        return features + self.attention(mask)

    def forward_after(
        self, module: Any, module_input: Tensor, features: Tensor, mask: Tensor, writable: bool = False
    ) -> Tensor:
        if writable and _eager_inference(features):
            hooked = self._forward_hooks or self._forward_pre_hooks
            writable = not hooked and _unseen(module, module_input, features)
        return self(features, mask, writable)

    @torch.jit.unused
    def _add_attention(self, features: Tensor, mask: Tensor, writable: bool) -> Tensor:
        """``features + conv(mask)`` as one batched product added to the features: the conv's weights and bias
        ``(C,10)`` times the mask's 3x3 neighbourhoods and a row of ones ``(B,10,H*W)``, written into ``features``
        itself where ``writable``. (CPUs run a one-channel conv of many channels slowly, and the sum allocates.)"""
        batch, channels, height, width = features.shape
        strides = features.stride()[1:]
        if strides == (height * width, width, 1):  # NCHW per photo: (B,C,HW) + kernel @ patches
            layout = "nchw"
        elif strides == (1, width * channels, channels):  # channels-last: (B,HW,C) + patches^T @ kernel^T
            layout = "nhwc"
        else:
            return features + self.attention(mask)
        device = features.device.type
        exact = torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext()
        with exact:  # in the features' dtype, as the sum would be
            padded = F.pad(mask.to(features.dtype)[:, 0], (1, 1, 1, 1))  # the 3x3 neighbourhoods, as shifted slices
            shifted = [padded[:, i : i + height, j : j + width] for i in range(3) for j in range(3)]
            patches = torch.stack([*shifted, padded.new_ones(padded.shape[0], height, width)], dim=1)
            patches = patches.flatten(2).expand(batch, -1, -1)
            kernel = torch.cat([self.weight.flatten(1), self.bias[:, None]], dim=1).to(features.dtype)
            if layout == "nchw":
                flat = features.as_strided((batch, channels, height * width), (features.stride(0), height * width, 1))
                left, right = kernel.expand(batch, -1, -1), patches
            else:
                flat = features.as_strided((batch, height * width, channels), (features.stride(0), channels, 1))
                left, right = patches.transpose(1, 2), kernel.t().expand(batch, -1, -1)
            if writable and features.stride(0) == channels * height * width:
                flat.baddbmm_(left, right)
                return features
            summed = torch.baddbmm(flat, left, right)
        if layout == "nchw":
            return summed.view(batch, channels, height, width)
        return summed.view(batch, height, width, channels).permute(0, 3, 1, 2)


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

    In eager training the attention map is not kept for backward but recomputed from the small mask; merged
    after a conv (``forward_after``), the features are recomputed from the conv's input too.
    """

    bias_init = 1.0

    def forward(self, features: Tensor, mask: Tensor) -> Tensor:
        mask = resize_mask(mask, features.shape[-2:], self.mask_resize).to(self.weight.dtype)
        if not torch.jit.is_scripting():
            if torch.is_grad_enabled() and not is_tracing():  # compilers plan their own recomputation
                return self._multiply(features, mask, None, None)
        return features * self.attention(mask)

    def forward_after(
        self, module: Any, module_input: Tensor, features: Tensor, mask: Tensor, writable: bool = False
    ) -> Tensor:
        if isinstance(module, nn.Conv2d) and torch.is_grad_enabled() and not is_tracing():
            mask = resize_mask(mask, features.shape[-2:], self.mask_resize).to(self.weight.dtype)
            return self._multiply(features, mask, module, module_input)
        return self(features, mask)

    @torch.jit.unused
    def _multiply(self, features: Tensor, mask: Tensor, source: Any, source_input: Any) -> Tensor:
        return _MultiplyByAttention.apply(features, mask, self.weight, self.bias, source, source_input)


class MaskGate(_MergeAfter, nn.Module):
    """``features * mask``: hard attention, everything outside the ROI becomes zero (no parameters)."""

    def __init__(
        self, channels: int | None = None, mask_resize: str = "max", device: Any = None, dtype: Any = None
    ) -> None:
        super().__init__()
        self.mask_resize = mask_resize

    def forward(self, features: Tensor, mask: Tensor) -> Tensor:
        return features * resize_mask(mask, features.shape[-2:], self.mask_resize).to(features.dtype)


@dataclass(frozen=True)
class TokenLayout:
    """How a Vision Transformer's features hold the patch grid at a merge point.

    ``patch_size``: pixels per token, (h, w). ``prefix_tokens``: tokens before the grid (class, registers,
    distillation; none straight after the patch embedding), never merged into. ``channels_last``: the grid as
    ``(B,H,W,C)`` (timm's ``dynamic_img_size`` patch embedding) instead of ``(B,N,C)``. ``pad``: the image is
    padded to whole patches (``dynamic_img_pad``), and so is the mask.
    """

    patch_size: tuple[int, int]
    prefix_tokens: int = 0
    channels_last: bool = False
    pad: bool = False


class _TokenGrid(_MergeAfter):
    """A ``(B,C,h,w)`` map of the patch grid laid out as the features' tokens (``TokenLayout``), the prefix
    tokens given ``fill``, the value that leaves them as they are."""

    fill = 0.0

    def _set_layout(self, layout: TokenLayout) -> None:
        self.fill = float(type(self).fill)  # an instance attribute: TorchScript sees those
        self.patch_size = tuple(int(p) for p in layout.patch_size)
        self.prefix_tokens = int(layout.prefix_tokens)
        self.channels_last = bool(layout.channels_last)
        self.pad = bool(layout.pad)

    def _padded(self, mask: Tensor) -> Tensor:
        if not self.pad:
            return mask
        patch_h, patch_w = self.patch_size
        return F.pad(mask, (0, (-mask.shape[-1]) % patch_w, 0, (-mask.shape[-2]) % patch_h))

    def as_tokens(self, grid: Tensor) -> Tensor:
        if self.channels_last:
            return grid.permute(0, 2, 3, 1)
        tokens = grid.flatten(2).transpose(1, 2)
        if self.prefix_tokens > 0:
            tokens = F.pad(tokens, (0, 0, self.prefix_tokens, 0), value=self.fill)
        return tokens


class TokenMaskAttentionAdd(_TokenGrid, nn.Conv2d):
    """``tokens + conv(mask)`` for a Vision Transformer: a conv of the full-resolution mask with the patch size as
    kernel and stride gives each patch token its attention vector (one pixel of the region reaches its patch), the
    prefix tokens are left as they are. At the patch embedding this is Alpha-CLIP's ``conv1_alpha``, with a bias
    that holds its mask normalisation. Weight and bias start at zero: no effect until trained.
    """

    bias_init = 0.0

    def __init__(
        self, channels: int, layout: TokenLayout, mask_resize: str = "max", device: Any = None, dtype: Any = None
    ) -> None:
        patch = tuple(int(p) for p in layout.patch_size)
        super().__init__(1, channels, kernel_size=patch, stride=patch, bias=True, device=device, dtype=dtype)
        self._set_layout(layout)
        self.mask_resize = mask_resize

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.constant_(self.bias, self.bias_init)

    def attention(self, mask: Tensor) -> Tensor:
        """The attention tokens for a ``(B,1,H,W)`` mask at the image's resolution."""
        return self.as_tokens(self._conv_forward(self._padded(mask).to(self.weight.dtype), self.weight, self.bias))

    def forward(self, features: Tensor, mask: Tensor) -> Tensor:
        return features + self.attention(mask)


class TokenMaskAttentionMul(TokenMaskAttentionAdd):
    """``tokens * conv(mask)`` for a Vision Transformer (``TokenMaskAttentionAdd``'s conv); weight 0 and bias 1
    make it start as identity."""

    bias_init = 1.0
    fill = 1.0

    def forward(self, features: Tensor, mask: Tensor) -> Tensor:
        return features * self.attention(mask)


class TokenMaskGate(_TokenGrid, nn.Module):
    """``tokens * mask``: hard attention for a Vision Transformer, every patch token outside the ROI zeroed (the
    mask resized to the patch grid with ``mask_resize``); no parameters."""

    fill = 1.0

    def __init__(
        self,
        channels: int | None = None,
        layout: TokenLayout | None = None,
        mask_resize: str = "max",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self._set_layout(layout or TokenLayout((16, 16)))
        self.mask_resize = mask_resize

    def forward(self, features: Tensor, mask: Tensor) -> Tensor:
        mask = self._padded(mask)
        patch_h, patch_w = self.patch_size
        rows, columns = mask.shape[-2] // patch_h, mask.shape[-1] // patch_w
        grid = resize_mask(mask[..., : rows * patch_h, : columns * patch_w], [rows, columns], self.mask_resize)
        return features * self.as_tokens(grid.to(features.dtype))


MERGE_LAYERS: dict[str, type[nn.Module]] = {
    "add": MaskAttentionAdd,
    "mul": MaskAttentionMul,
    "gate": MaskGate,
}
# The same merge modes into a Vision Transformer's tokens.
TOKEN_MERGE_LAYERS: dict[str, type[nn.Module]] = {
    "add": TokenMaskAttentionAdd,
    "mul": TokenMaskAttentionMul,
    "gate": TokenMaskGate,
}


def create_merge_layer(
    merge: str,
    channels: int,
    mask_resize: str = "max",
    device: Any = None,
    dtype: Any = None,
    tokens: TokenLayout | None = None,
) -> nn.Module:
    """The side-branch module for merge mode ``merge`` into a feature map of ``channels`` channels, or into the
    tokens of a Vision Transformer laid out as ``tokens`` says."""
    if merge not in MERGE_LAYERS:
        raise ValueError(f"unknown merge mode {merge!r}, expected one of {tuple(MERGE_LAYERS)}")
    if tokens is not None:
        return TOKEN_MERGE_LAYERS[merge](channels, tokens, mask_resize=mask_resize, device=device, dtype=dtype)
    return MERGE_LAYERS[merge](channels, mask_resize=mask_resize, device=device, dtype=dtype)
