"""A classifier over image embeddings by cosine similarity: CLIP's zero-shot head, classes given by name."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn


class CosineClassifier(nn.Linear):
    """Logits = the L2-normalised embedding times ``weight.T``: with ``weight`` the class embeddings (CLIP text
    embeddings of the class names), normalised and multiplied by the logit scale, these are CLIP's zero-shot logits.
    """

    def __init__(self, embed_dim: int, num_classes: int, device: Any = None, dtype: Any = None) -> None:
        super().__init__(embed_dim, num_classes, bias=False, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.normalize(x, dim=-1), self.weight)
