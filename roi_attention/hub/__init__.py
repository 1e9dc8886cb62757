"""Saving, loading and converting weights."""

from .convert import convert_efficientnet_lite0, default_cache_dir
from .load import label_names, load_model, resolve_model_name
from .local import save_model

__all__ = [
    "convert_efficientnet_lite0",
    "default_cache_dir",
    "label_names",
    "load_model",
    "resolve_model_name",
    "save_model",
]
