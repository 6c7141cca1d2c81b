"""Data-parallel training: 2 CPU processes with Gloo under torchrun equal one process with the same
global batch; BatchTopK's threshold is reduced; a resumed 2-rank run continues exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "ddp_worker.py"
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def launch(tmp: Path, spec: dict, nproc: int, name: str, expect_rc: int = 0) -> dict[int, dict]:
    out = tmp / name
    out.mkdir(exist_ok=True)
    spec_file = tmp / f"{name}.json"
    spec_file.write_text(json.dumps(spec))
    if nproc == 1:  # the reference run, in this process (no process group)
        sys.path.insert(0, str(WORKER.parent))
        try:
            import ddp_worker
        finally:
            sys.path.pop(0)
        threads = torch.get_num_threads()
        try:
            ddp_worker.run(spec, out)
        finally:
            torch.set_num_threads(threads)
        return {0: torch.load(out / "rank0.pt")}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--standalone", str(WORKER), str(spec_file), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == expect_rc or (expect_rc and proc.returncode != 0), proc.stderr[-3000:]
    return {r: torch.load(out / f"rank{r}.pt") for r in range(nproc) if (out / f"rank{r}.pt").exists()}


def spec(arch: str, steps: int = 25, **model) -> dict:
    return {"arch": arch, "model": dict(d_model=16, dict_size=48, seed=1, **model),
            "train": dict(steps=steps, batch_size=64, warmup_steps=5, lr=3e-3, log_every=1,
                          normalization_batches=4, progress=False),
            "data": dict(n=1024, d=16, seed=2), "stop_after": None}


def assert_same_state(a: dict, b: dict, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, msg=key)


@pytest.mark.parametrize("arch,model", [("topk", dict(k=4)), ("soft", dict(k=4, alpha=0.5))])
def test_two_gloo_ranks_equal_one_process(tmp_path, arch, model):
    """Same global batch ⇒ same model. SoftSAE at α = 0.5 checks the budget loss's batch mean of k̂,
    which spans both ranks (at α = 1e-4 the nearly hard mask amplifies float rounding chaotically)."""
    s = spec(arch, **model)
    one = launch(tmp_path, s, 1, "one")[0]
    two = launch(tmp_path, s, 2, "two")
    assert two[0]["world_size"] == 2
    assert_same_state(two[0]["state"], two[1]["state"], rtol=0, atol=0)  # ranks stay in lockstep
    assert_same_state(one["state"], two[0]["state"])
    np.testing.assert_allclose(two[0]["loss"], one["loss"], rtol=1e-4)


def test_batch_topk_threshold_is_reduced_across_ranks(tmp_path):
    s = spec("batch_topk", k=4, threshold_start_step=5)
    two = launch(tmp_path, s, 2, "two")
    t0, t1 = two[0]["state"]["threshold"], two[1]["state"]["threshold"]
    assert float(t0) > 0 and torch.equal(t0, t1)


def test_resumed_two_rank_run_continues_exactly(tmp_path):
    s = spec("topk", steps=20, k=4)
    s["train"].update(checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=10, resume=True)
    interrupted = dict(s, stop_after=14)
    assert launch(tmp_path, interrupted, 2, "a", expect_rc=1) == {}  # died after step 14
    assert (tmp_path / "ckpt" / "checkpoint.pt").exists()
    resumed = launch(tmp_path, s, 2, "b")
    plain = spec("topk", steps=20, k=4)
    one = launch(tmp_path, plain, 1, "one")[0]
    assert_same_state(one["state"], resumed[0]["state"])
    assert len(resumed[0]["loss"]) == 20
    np.testing.assert_allclose(resumed[0]["loss"], one["loss"], rtol=1e-4)


def test_train_cli_under_torchrun_writes_once(tmp_path):
    x = (torch.randn(512, 8, generator=torch.Generator().manual_seed(0))).numpy()
    np.save(tmp_path / "x.npy", x)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "softsae_lib", "train", "--data", str(tmp_path / "x.npy"), "--arch", "soft",
           "--dict-size", "32", "--k", "3", "--set", "alpha=0.1", "--steps", "12", "--batch-size", "64",
           "--warmup-steps", "2", "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "train.json").read_text())
    assert record["world_size"] == 2 and record["args"]["set"] == ["alpha=0.1"]
    from softsae_lib.io import load_sae

    model = load_sae(tmp_path / "run" / "model")
    assert model.config.alpha == 0.1 and model.dict_size == 32
    hist = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(hist) == 1 + 3  # header + steps 0, 10 (log_every=10) and the last, 11


def test_train_cli_reads_an_activation_cache_like_the_array(tmp_path):
    """A multi-shard activation cache trains exactly like the same rows in one .npy file."""
    from softsae_lib.__main__ import main
    from softsae_lib.activations.cache import CacheWriter
    from softsae_lib.io import load_sae

    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(3)).numpy()
    np.save(tmp_path / "x.npy", x)
    with CacheWriter(tmp_path / "cache", d=8, meta={"what": "test"}, shard_rows=128) as w:
        for s in range(0, 300, 100):
            w.append(x[s:s + 100])
    common = ["train", "--arch", "topk", "--dict-size", "16", "--k", "2", "--steps", "6",
              "--batch-size", "32", "--warmup-steps", "1"]
    threads = torch.get_num_threads()
    try:
        assert main([*common, "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "a")]) == 0
        assert main([*common, "--data", str(tmp_path / "cache"), "--out", str(tmp_path / "b")]) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = load_sae(tmp_path / "a" / "model"), load_sae(tmp_path / "b" / "model")
    assert_same_state(a.state_dict(), b.state_dict(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="expected a .npy file"):
        main(["--debug", *common, "--data", str(tmp_path / "a" / "train.json"), "--out", str(tmp_path / "c")])
