"""The benchmark scripts keep working and report consistent figures (run tiny; no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(module: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=300)
    return json.loads(out.stdout)


def test_soft_topk_benchmark_json():
    res = _run("benchmarks.soft_topk", "--rows", "64", "--n", "2048", "--k", "16", "--repeats", "1")
    assert res["shape"] == [64, 2048]
    assert abs(res["time_ratio"] - res["soft_fwd_bwd_s"] / res["hard_fwd_bwd_s"]) < 1e-9
    assert res["input_bytes"] == 64 * 2048 * 4
    assert res["soft_peak_extra_bytes"] >= 0 and "git_sha" in res["provenance"]


def test_train_step_benchmark_json():
    res = _run("benchmarks.train_step", "--d", "16", "--F", "64", "--batch", "32", "--k", "4",
               "--steps", "1", "--rounds", "1")
    assert len(res["all_step_times_s"]["soft"]) == 1 and len(res["all_step_times_s"]["topk"]) == 1
    assert abs(res["ratio"] - res["softsae_step_s"] / res["topk_step_s"]) < 1e-9
