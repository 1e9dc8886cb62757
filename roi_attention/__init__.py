"""roi-attention: timm models that classify the region of a photo given by a mask (arXiv 1812.00291)."""

from .layers import RoiInputError
from .models import BACKBONES, HUB_ORG, VARIANTS, PretrainedWeightsError, RoiAttentionNet

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "HUB_ORG",
    "VARIANTS",
    "PretrainedWeightsError",
    "RoiAttentionNet",
    "RoiInputError",
    "__version__",
]
