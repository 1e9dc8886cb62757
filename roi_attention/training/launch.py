"""Running ``train/train.py`` from code (the scene benchmark and the demo), as a user would from a shell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "train" / "train.py"


def run_training(overrides: dict[str, Any], quiet: bool = False) -> Path:
    """Run ``train/train.py`` with ``--key value`` overrides in a fresh process; returns ``output_dir/model``.

    Raises ``RuntimeError`` with the end of the script's error output when it fails.
    """
    if not TRAIN_SCRIPT.is_file():
        raise FileNotFoundError(f"{TRAIN_SCRIPT} not found: training runs from a checkout of the repository")
    command = [sys.executable, str(TRAIN_SCRIPT)]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    done = subprocess.run(command, env=env, capture_output=quiet, text=True)
    if done.returncode != 0:
        detail = (done.stderr or "")[-2000:] if quiet else "(its output is above)"
        raise RuntimeError(f"training {overrides.get('model')} failed with exit code {done.returncode}: {detail}")
    return Path(overrides["output_dir"]) / "model"
