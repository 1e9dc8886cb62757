"""Resumable training state: ``accelerate`` checkpoints written completely or not at all, the last K kept."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

STEP_DIR = re.compile(r"^step_(\d{8})$")


class TrainingProgress:
    """The step count, saved and restored with the checkpoint (``register_for_checkpointing``)."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest first."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def resolve_resume(output_dir: str | os.PathLike, resume: str | None) -> Path | None:
    """The checkpoint to resume from: ``latest`` (None when there is none yet) or a given folder."""
    if resume is None:
        return None
    if resume == "latest":
        found = checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path.is_dir() and STEP_DIR.match(path.name)):
        raise FileNotFoundError(f"resume: {path} is not a checkpoint folder (checkpoints/step_NNNNNNNN)")
    return path


def save_checkpoint(accelerator: Any, output_dir: str | os.PathLike, step: int, keep: int) -> Path:
    """Save the full training state as ``checkpoints/step_{step}``, then drop all but the last ``keep``."""
    folder = Path(output_dir) / "checkpoints"
    final = folder / f"step_{step:08d}"
    partial = folder / f"step_{step:08d}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        os.replace(partial, final)
        for old in checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
