"""What produced a result: library and dependency versions, git commit, platform."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

_PACKAGES = ("softsae_lib", "torch", "numpy", "scipy", "pandas", "safetensors", "transformers")


def git_sha(path: str | Path | None = None) -> str | None:
    """Commit of the repository containing ``path`` (default: this package), '+dirty' if a tracked
    file outside ``results/`` is modified (regenerating results must not mark the code dirty)."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude)results"], cwd=where,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance() -> dict:
    """A JSON-serialisable record to store beside every result."""
    import torch

    return {
        "versions": versions(),
        "git_sha": git_sha(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }


def save_metrics(path, metrics: dict) -> None:
    """Write ``metrics`` plus this run's provenance as JSON, atomically (NaN becomes null; a pandas
    DataFrame becomes its list of row records; a settings dataclass its fields)."""
    import dataclasses
    import json
    import math

    from softsae_lib.atomic import atomic_write_text

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return clean(dataclasses.asdict(v))
        if hasattr(v, "columns") and hasattr(v, "to_dict"):  # DataFrame
            return clean(v.to_dict(orient="records"))
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            return clean(v.item())
        return v

    atomic_write_text(path, json.dumps(clean({**metrics, "provenance": provenance()}), indent=2))
