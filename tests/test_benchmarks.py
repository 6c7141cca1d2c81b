"""The benchmark scripts keep working and report consistent figures (run tiny; no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    # seven matmuls against five, one ratio per round (their median reported)
    per_round = res["matmul_only_ratio_per_round"]
    assert len(per_round) == 3 and all(r > 0 for r in per_round)
    assert res["matmul_only_ratio"] == sorted(per_round)[1]


def test_soft_topk_scaling_benchmark_json(tmp_path):
    res = _run("benchmarks.soft_topk_scaling", "--batches", "8", "--sizes", "128", "256", "512", "--k", "4",
               "--repeats", "1", "--sort-max-n", "256", "--plot", str(tmp_path / "s.png"))
    assert [(r["batch"], r["n"]) for r in res["rows"]] == [(8, 128), (8, 256), (8, 512)]
    r = res["rows"][0]
    assert abs(r["window_over_hard"] - r["window_s"] / r["hard_s"]) < 1e-9
    assert abs(r["sort_over_window"] - r["sort_s"] / r["window_s"]) < 1e-9
    # the sort-based operator is timed up to --sort-max-n only; its slope uses the points it has
    assert res["rows"][2]["sort_s"] is None and res["rows"][2]["sort_over_window"] is None
    slopes = res["loglog_slope_time_vs_n"]["8"]
    assert set(slopes) == {"window", "sort", "hard"} and all(isinstance(v, float) for v in slopes.values())
    assert res["meets_targets"] == (slopes["window"] <= res["target_window_slope_max"])
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_memory_benchmark_json():
    res = _run("benchmarks.memory", "--d", "16", "--F", "64", "128", "--batch", "32", "--k", "4",
               "--steps", "1", "--limit-gib", "0.001")
    assert [(r["arch"], r["dict_size"]) for r in res["runs"]] == [("soft", 64), ("topk", 64), ("soft", 128),
                                                                  ("topk", 128)]
    # a Python process alone exceeds 1 MiB: nothing fits this limit, and the JSON says so
    assert all(r["peak_gib"] > 0.001 for r in res["runs"]) and res["largest_dict_size_within_limit"] is None
    assert res["all_fit"] is False and res["meets_targets"] is False


def test_make_bench_runs_every_benchmark_script():
    """`make bench` is the suite: a script added to benchmarks/ but not to the target is caught here."""
    lines = (ROOT / "Makefile").read_text().split("\nbench:", 1)[1].split("\n\n", 1)[0].splitlines()
    run = {ln.split("-m benchmarks.", 1)[1].split()[0] for ln in lines if "-m benchmarks." in ln}
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_")}
    assert run == scripts
    # each writes its own JSON file
    assert all(f"results/bench/{name}.json" in "\n".join(lines) for name in scripts)


def test_peer_saelens_benchmark_json(capsys, single_thread):
    """Both libraries trained on the same batches in the same order; every model scored the same way.

    In-process (not _run): importing sae_lens costs seconds, and the interop tests have paid it."""
    pytest.importorskip("sae_lens")
    from benchmarks.peer_saelens import main

    steps = 12
    main(["--features", "24", "--d", "12", "--n-train", "640", "--n-cal", "256",
               "--n-test", "256", "--F", "48", "--k", "3", "--batch", "64", "--steps", str(steps),
               "--seeds", "0", "1"])
    res = json.loads(capsys.readouterr().out)
    names = {"topk/softsae_lib", "topk/sae_lens", "batch_topk/softsae_lib", "batch_topk/sae_lens",
             "soft/softsae_lib"}
    assert res["identical_batch_order"] is True and res["seeds"] == [0, 1]
    for runs in res["per_seed"].values():
        assert set(runs) == names
        # every trainer's training pass read exactly `steps` batches, in one order per seed
        assert {r["batches"] for r in runs.values()} == {steps}
        assert len({r["batch_order_sha256"] for r in runs.values()}) == 1
        assert runs["topk/softsae_lib"]["l0_mean"] == runs["topk/sae_lens"]["l0_mean"] == 3
        for r in runs.values():
            assert 0 <= r["mcc"] <= 1 and 0 <= r["features_found"] <= 24 and r["ms_per_step"] > 0
        # BatchTopK: both calibrated on the calibration split; both also put at SoftSAE's L0
        for lib in ("softsae_lib", "sae_lens"):
            bt = runs[f"batch_topk/{lib}"]
            assert {"own_threshold", "threshold", "at_soft_l0"} <= set(bt)
            assert bt["at_soft_l0"]["target_l0"] < 3
    # the order differs between seeds, so the digest is not a constant
    assert res["per_seed"]["0"]["soft/softsae_lib"]["batch_order_sha256"] != \
        res["per_seed"]["1"]["soft/softsae_lib"]["batch_order_sha256"]
    per = [res["per_seed"][s] for s in ("0", "1")]
    fvus = [p["batch_topk/sae_lens"]["fvu"] for p in per]
    assert abs(res["mean_over_seeds"]["batch_topk/sae_lens"]["fvu"] - sum(fvus) / 2) < 1e-12
    speedups = sorted(p["topk/sae_lens"]["ms_per_step"] / p["topk/softsae_lib"]["ms_per_step"] for p in per)
    assert abs(res["ratios"]["topk_speedup"] - sum(speedups) / 2) < 1e-12
    assert res["meets_targets"] == all(res["checks"].values()) and "git_sha" in res["provenance"]
