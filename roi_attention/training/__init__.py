"""Pieces of the training script (`train/train.py`): configuration, data order, checkpoints."""

from .checkpoints import TrainingProgress, checkpoints, resolve_resume, save_checkpoint
from .config import RECIPES, ConfigError, TrainConfig, check_config, load_config, save_config
from .data import DrawSampler, SeededRegions

__all__ = [
    "RECIPES",
    "ConfigError",
    "DrawSampler",
    "SeededRegions",
    "TrainConfig",
    "TrainingProgress",
    "check_config",
    "checkpoints",
    "load_config",
    "resolve_resume",
    "save_checkpoint",
    "save_config",
]
