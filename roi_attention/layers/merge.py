"""Side-branch modules that merge a resized ROI mask into a feature map."""

from __future__ import annotations

from torch import Tensor, nn


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


class MaskAttentionMul(MaskAttentionAdd):
    """``features * conv(mask)`` (paper, Fig. 3b/d/g); weight 0 and bias 1 make it start as identity."""

    bias_init = 1.0

    def forward(self, features: Tensor, mask: Tensor) -> Tensor:
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
