"""Resumable training checkpoints, written atomically (``checkpoint.pt`` in the run folder)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from softsae_lib.atomic import atomic_path

CHECKPOINT_FILE = "checkpoint.pt"
# Fields that may differ between the interrupted and the resumed run without changing the result.
_RESUME_FREE = {"resume", "progress", "checkpoint_dir", "checkpoint_every", "log_every", "device"}


class CheckpointError(ValueError):
    """A checkpoint is unreadable or belongs to a different run."""


def save_checkpoint(folder: str | Path, state: dict) -> Path:
    path = Path(folder) / CHECKPOINT_FILE
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(folder: str | Path) -> dict | None:
    """The saved state, or None when the folder has no checkpoint yet."""
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for a damaged zip/pickle
        raise CheckpointError(f"{path}: cannot be read ({type(err).__name__}: {err}); "
                              f"delete it to start over") from err


def check_compatible(path: Path, saved: dict, model_arch: str, model_cfg, train_cfg) -> None:
    """Refuse to resume a checkpoint written by a different model or training configuration."""
    if saved.get("arch") != model_arch or saved.get("model_config") != dataclasses.asdict(model_cfg):
        raise CheckpointError(f"{path}: written for arch {saved.get('arch')!r} with config "
                              f"{saved.get('model_config')}, not this {model_arch!r} model")
    now = dataclasses.asdict(train_cfg)
    then = saved.get("train_config", {})
    diff = sorted(k for k in now if k not in _RESUME_FREE and now[k] != then.get(k))
    if diff:
        raise CheckpointError(f"{path}: TrainConfig differs from the checkpointed run in {diff} "
                              f"(e.g. {diff[0]}: {then.get(diff[0])!r} → {now[diff[0]]!r})")
