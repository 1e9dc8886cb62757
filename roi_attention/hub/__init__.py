"""Saving, loading and converting weights."""

from .convert import convert_efficientnet_lite0, default_cache_dir
from .local import save_model

__all__ = ["convert_efficientnet_lite0", "default_cache_dir", "save_model"]
