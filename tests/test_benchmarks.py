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
    assert res["softsae_tokens_per_s"] == 32 / res["softsae_step_s"] and res["peak_gpu_memory_gib"] is None


def test_soft_topk_scaling_benchmark_json(tmp_path):
    res = _run("benchmarks.soft_topk_scaling", "--batches", "8", "--sizes", "256", "512", "--k", "4",
               "--repeats", "1", "--plot", str(tmp_path / "s.png"))
    assert [(r["batch"], r["n"]) for r in res["rows"]] == [(8, 256), (8, 512)]
    r = res["rows"][0]
    assert abs(r["window_over_hard"] - r["window_s"] / r["hard_s"]) < 1e-9
    assert set(res["loglog_slope_time_vs_n"]["8"]) == {"window", "sort", "hard"}
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_memory_benchmark_json():
    res = _run("benchmarks.memory", "--d", "16", "--F", "64", "128", "--batch", "32", "--k", "4",
               "--steps", "1", "--limit-gib", "0.001")
    assert [(r["arch"], r["dict_size"]) for r in res["runs"]] == [("soft", 64), ("topk", 64), ("soft", 128),
                                                                  ("topk", 128)]
    # a Python process alone exceeds 1 MiB: nothing fits this limit, and the JSON says so
    assert all(r["peak_gib"] > 0.001 for r in res["runs"]) and res["largest_dict_size_within_limit"] is None
