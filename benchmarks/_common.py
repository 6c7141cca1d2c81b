"""Helpers shared by the benchmark scripts: timing, peak-memory in a child process, JSON output."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch


def intervals(stamps: list[float]) -> list[float]:
    """Differences between consecutive time stamps (seconds)."""
    return [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True)]


def train_sae_step_times(model, data: torch.Tensor, batch_size: int, steps: int, device: str | None = None,
                         bf16: bool = False) -> list[float]:
    """Seconds per step of ``train_sae`` on ``data``: steps + 1 run, step 0 (the b_dec init) untimed."""
    from softsae_lib import TrainConfig, train_sae

    stamps: list[float] = []
    cfg = TrainConfig(steps=steps + 1, batch_size=batch_size, lr=1e-4, warmup_steps=0,
                      normalization_batches=1, device=device, progress=False, autocast_bf16=bf16)

    def on_step(step: int, terms: dict) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    train_sae(model, data, cfg, on_step=on_step)
    return intervals(stamps)


def timed(fn: Callable[[], None]) -> float:
    """Wall time of one call of ``fn`` (seconds), with CUDA synchronised before and after."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def best_time(fn: Callable[[], None], repeats: int = 5, warmup: int = 1) -> float:
    """Minimum wall time of ``fn`` over ``repeats`` runs (seconds), synchronising CUDA."""
    for _ in range(warmup):
        fn()
    return min(timed(fn) for _ in range(repeats))


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident memory in bytes.

    Reads VmHWM, which starts afresh in an exec'd child; ru_maxrss (the fallback off Linux)
    carries the parent's peak across exec on Linux and would hide the child's own.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(module: str, *args: str) -> dict:
    """Run ``python -m module args`` and parse the JSON it prints on its last line."""
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def emit(result: dict) -> None:
    from softsae_lib.provenance import provenance

    result = {**result, "provenance": provenance()}
    print(json.dumps(result, indent=2))
