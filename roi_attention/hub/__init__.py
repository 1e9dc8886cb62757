"""Saving, loading, converting and publishing weights; model and dataset cards."""

from .cards import render_model_card, write_model_card
from .convert import convert_efficientnet_lite, convert_efficientnet_lite0, default_cache_dir
from .load import label_names, load_model, resolve_model_name
from .local import save_model
from .original import convert_original_checkpoint
from .publish import HubPublishError, check_model_folder, publish

__all__ = [
    "HubPublishError",
    "check_model_folder",
    "convert_efficientnet_lite",
    "convert_efficientnet_lite0",
    "convert_original_checkpoint",
    "default_cache_dir",
    "label_names",
    "load_model",
    "publish",
    "render_model_card",
    "resolve_model_name",
    "save_model",
    "write_model_card",
]
