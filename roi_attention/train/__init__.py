"""Fine-tuning: the loop (``python -m roi_attention.train``), its configuration, data order and checkpoints."""

from .checkpoints import TrainingProgress, checkpoints, resolve_resume, save_checkpoint
from .config import RECIPES, ConfigError, TrainConfig, check_config, load_config, save_config
from .data import DrawSampler, SeededRegions
from .loop import StepState, build_model, build_optimizer, build_scheduler, main, param_groups, run_training, train

__all__ = [
    "RECIPES",
    "ConfigError",
    "DrawSampler",
    "SeededRegions",
    "StepState",
    "TrainConfig",
    "TrainingProgress",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "check_config",
    "checkpoints",
    "load_config",
    "main",
    "param_groups",
    "resolve_resume",
    "run_training",
    "save_checkpoint",
    "save_config",
    "train",
]
