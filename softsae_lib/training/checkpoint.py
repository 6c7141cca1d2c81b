"""Resumable training checkpoints, written atomically (``checkpoint.pt`` in the run folder).

The file holds only tensors and plain Python values and is read with ``torch.load(weights_only=True)``,
so a crafted checkpoint cannot run code; its structure is checked before anything is restored. It
also records a fingerprint of the training data (:func:`softsae_lib.batches.data_fingerprint`), so
that resuming on different data is refused instead of silently mixing two data sets. Checkpoints
written before a TrainConfig field was renamed or moved to the model config (``auxk_alpha``,
``alpha_anneal_steps``, ``hard_topk_steps``) resume: their configs are migrated before the comparison.
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import torch

from softsae_lib.atomic import atomic_path
from softsae_lib.training.config import migrate_train_config

CHECKPOINT_FILE = "checkpoint.pt"
# Fields that may differ between the interrupted and the resumed run without changing the result.
_RESUME_FREE = {"resume", "progress", "checkpoint_dir", "checkpoint_every", "log_every", "device"}
# key -> accepted types; every key is required.
_SCHEMA: dict[str, tuple[type, ...]] = {
    "step": (int,), "arch": (str,), "model_config": (dict,), "train_config": (dict,),
    "model": (dict,), "optimizer": (dict,), "since_fired": (torch.Tensor,), "history": (list,),
    "data": (dict,),
}
# key -> accepted types; checkpoints written before the key existed lack it.
_OPTIONAL: dict[str, tuple[type, ...]] = {"fvu_interval": (list,)}  # [FVU sum, steps] since the last log


class CheckpointError(ValueError):
    """A checkpoint is unreadable or belongs to a different run."""


def check_checkpoint_dir(folder: str | Path) -> None:
    """Fail before training (not at the first checkpoint) when ``folder`` cannot hold checkpoints."""
    path = Path(folder)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise CheckpointError(f"checkpoint_dir {folder}: {p} is a file, not a folder")
            break
    if path.joinpath(CHECKPOINT_FILE).is_dir():
        raise CheckpointError(f"checkpoint_dir {folder}: {CHECKPOINT_FILE} there is a folder")


def save_checkpoint(folder: str | Path, state: dict) -> Path:
    path = Path(folder) / CHECKPOINT_FILE
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(folder: str | Path) -> dict | None:
    """The saved state (structure checked), or None when the folder has no checkpoint yet."""
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused a type: old format or crafted file
        raise CheckpointError(f"{path}: holds objects other than tensors and plain values, which are "
                              f"not loaded (a crafted file, or a checkpoint from an older version: "
                              f"delete it to start over) [{str(err).splitlines()[0]}]") from err
    except Exception as err:  # torch raises several types for a damaged zip/pickle
        raise CheckpointError(f"{path}: cannot be read ({type(err).__name__}: {err}); "
                              f"delete it to start over") from err
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: expected a dict of training state, got {type(saved).__name__}; "
                              f"delete it to start over")
    missing = [k for k in _SCHEMA if k not in saved]
    if missing:
        raise CheckpointError(f"{path}: lacks {missing} (a damaged checkpoint or one from an older "
                              f"version); delete it to start over")
    for key, types in _SCHEMA.items():
        if not isinstance(saved[key], types) or (key == "step" and isinstance(saved[key], bool)):
            raise CheckpointError(f"{path}: field {key!r} is a {type(saved[key]).__name__}, expected "
                                  f"{'/'.join(t.__name__ for t in types)}; delete it to start over")
    for key, types in _OPTIONAL.items():
        value = saved.get(key)
        if key in saved and not (isinstance(value, types) and len(value) == 2
                                 and all(isinstance(v, (int, float)) for v in value)):
            raise CheckpointError(f"{path}: field {key!r} is {value!r}, expected a "
                                  f"{'/'.join(t.__name__ for t in types)} of two numbers [sum, count]; "
                                  f"delete it to start over")
    if saved["step"] < 0:
        raise CheckpointError(f"{path}: field 'step' is {saved['step']}, expected ≥ 0")
    bad = [k for k, v in saved["model"].items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: model state entries {bad} are not tensors")
    return saved


def check_compatible(path: Path, saved: dict, model_arch: str, model_cfg, train_cfg,
                     data: dict | None = None) -> None:
    """Refuse to resume a checkpoint written by a different model, training configuration or data."""
    then = saved.get("train_config", {})
    then_model = saved.get("model_config")
    if saved.get("arch") == model_arch and isinstance(then_model, dict):
        then_model = type(model_cfg).migrate(then_model, then)  # configs saved by earlier versions
    if saved.get("arch") != model_arch or then_model != dataclasses.asdict(model_cfg):
        raise CheckpointError(f"{path}: written for arch {saved.get('arch')!r} with config "
                              f"{saved.get('model_config')}, not this {model_arch!r} model")
    now = dataclasses.asdict(train_cfg)
    then = migrate_train_config(then)
    diff = sorted(k for k in now if k not in _RESUME_FREE and now[k] != then.get(k))
    if diff:
        raise CheckpointError(f"{path}: TrainConfig differs from the checkpointed run in {diff} "
                              f"(e.g. {diff[0]}: {then.get(diff[0])!r} → {now[diff[0]]!r})")
    if data is not None and saved.get("data") != data:
        then_d = saved.get("data", {})
        which = sorted(k for k in set(data) | set(then_d) if data.get(k) != then_d.get(k))
        raise CheckpointError(f"{path}: the training data differs from the checkpointed run's in "
                              f"{which} (checkpoint {then_d}, now {data}); resume with the same "
                              f"data or delete the checkpoint to start over")
