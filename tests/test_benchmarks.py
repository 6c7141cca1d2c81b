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
               "--steps", "2", "--rounds", "3")
    soft, topk = res["all_step_times_s"]["soft"], res["all_step_times_s"]["topk"]
    assert len(soft) == len(topk) == 6
    assert res["softsae_step_s"] == min(soft) and res["topk_step_s"] == min(topk)
    assert abs(res["ratio_of_minima"] - min(soft) / min(topk)) < 1e-9
    # ratio: the median over rounds of the within-round ratio of best steps
    rounds = sorted(min(soft[2 * r:2 * r + 2]) / min(topk[2 * r:2 * r + 2]) for r in range(3))
    assert abs(res["ratio"] - rounds[1]) < 1e-12 and sorted(res["ratio_per_round"]) == rounds
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


def test_make_bench_runs_every_benchmark_script():
    """`make bench` is the suite: a script added to benchmarks/ but not to the target is caught here."""
    lines = (ROOT / "Makefile").read_text().split("\nbench:", 1)[1].split("\n\n", 1)[0].splitlines()
    run = {ln.split("-m benchmarks.", 1)[1].split()[0] for ln in lines if "-m benchmarks." in ln}
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_")}
    assert run == scripts
    # each writes its own JSON file
    assert all(f"results/bench/{name}.json" in "\n".join(lines) for name in scripts)
