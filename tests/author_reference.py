"""The paper author's ROI classifier as ``method.md`` describes it, written independently for the converter
tests: a torchvision ResNet50 under ``Net``, attention convs as ``Attentionlayer`` or ``ValeLayers.K``, 0-255
input normalised inside the model (mean per channel, std 65), the mask resized bilinearly to each merge point."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

MEAN = (123.68, 116.779, 103.939)
STAGES = ("layer1", "layer2", "layer3", "layer4")
CHANNELS = {"conv1": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}


class AuthorNet(nn.Module):
    def __init__(self, num_classes: int, merge: str, at: str, attention_layer: bool = False) -> None:
        super().__init__()
        self.merge, self.at = merge, at
        self.Net = torchvision.models.resnet50(weights=None)
        self.Net.fc = nn.Linear(2048, num_classes)
        points = {"l1": ["conv1"], "l3": ["layer3"], "all": ["conv1", *STAGES], "image": []}[at]
        if merge == "gate":
            points = []
        self.points = points
        if attention_layer:
            self.Attentionlayer = nn.Conv2d(1, 64, 3, 1, 1, bias=True)
        else:
            self.ValeLayers = nn.ModuleList(nn.Conv2d(1, CHANNELS[p], 3, 1, 1, bias=True) for p in points)

    def _attention(self, index: int) -> nn.Conv2d:
        return self.Attentionlayer if hasattr(self, "Attentionlayer") else self.ValeLayers[index]

    def _merge(self, x: torch.Tensor, roi: torch.Tensor, point: str) -> torch.Tensor:
        if self.merge == "gate" and point == "conv1" and self.at == "l1":
            return x * F.interpolate(roi, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if point not in self.points:
            return x
        attention = self._attention(self.points.index(point))(
            F.interpolate(roi, size=x.shape[-2:], mode="bilinear", align_corners=False)
        )
        return x + attention if self.merge == "add" else x * attention

    def forward(self, images: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        """``images``: (B,3,H,W) pixels 0-255 in the model's channel order; ``roi``: (B,1,H,W) in {0,1}."""
        x = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / 65
        if self.at == "image":
            x = x * roi
        net = self.Net
        x = self._merge(net.conv1(x), roi, "conv1")
        x = net.maxpool(net.relu(net.bn1(x)))
        for stage in STAGES:
            x = self._merge(getattr(net, stage)(x), roi, stage)
        return net.fc(torch.flatten(net.avgpool(x), 1))


def randomized(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter and batch-norm statistic drawn at random, so that a wrong mapping shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dtype.is_floating_point:
                values = torch.randn(tensor.shape, generator=generator) * 0.05
                if name.endswith("running_var"):
                    values = 0.5 + values.abs()
                elif tensor.ndim == 1 and name.endswith(".weight"):  # batch-norm scales
                    values = 1 + values
                tensor.copy_(values)
    return model
