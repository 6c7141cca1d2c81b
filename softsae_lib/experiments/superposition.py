"""Synthetic sparse-superposition check: does SoftSAE's k̂ track the true number of active features?

Trains SoftSAE, TopK and BatchTopK at the same target k on :func:`sparse_superposition` data,
evaluates on held-out samples and reports reconstruction, sparsity, and the rank correlation of
each model's per-sample sparsity (SoftSAE: k̂ and hard L0; baselines: L0) with the true count.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import torch
from scipy.stats import spearmanr

from softsae_lib.atomic import atomic_write_text
from softsae_lib.data.synthetic import sparse_superposition
from softsae_lib.evaluation import evaluate_sae
from softsae_lib.io import save_sae
from softsae_lib.provenance import provenance
from softsae_lib.saes import make_sae
from softsae_lib.training import TrainConfig, train_sae

ARCHS = ("soft", "topk", "batch_topk")


def _spearman(a, b) -> float | None:
    """Spearman's ρ, or None when either side is constant (e.g. TopK's L0) and ρ is undefined."""
    if len(set(a.tolist())) < 2 or len(set(b.tolist())) < 2:
        return None
    return float(spearmanr(a, b).statistic)


def train_config(p: dict, arch: str) -> TrainConfig:
    steps = p["steps"]
    return TrainConfig(
        steps=steps, batch_size=p["batch_size"], lr=p["lr"], warmup_steps=max(1, steps // 20),
        decay_start=int(0.8 * steps), k_anneal_steps=max(1, steps // 20),
        alpha_anneal_steps=max(1, steps // 5) if arch == "soft" else None,
        hard_topk_steps=steps // 10 if arch == "soft" else None,
        dead_threshold=50 * p["batch_size"], seed=p["seed"], log_every=max(1, steps // 100),
    )


def run(p: dict, out_dir: str | Path | None = None) -> dict:
    """Run the experiment with parameters ``p`` (see ``profiles.EXPERIMENTS['superposition']``).

    Writes ``metrics.json``, ``history_<arch>.csv``, ``per_sample.csv`` and the SAEs to
    ``out_dir`` when given; returns the metrics dict.
    """
    torch.manual_seed(p["seed"])
    data = sparse_superposition(p["n_train"] + p["n_test"], p["d"], p["n_features"],
                                max_active=p["max_active"], seed=p["seed"])
    x_train, x_test = data.x[:p["n_train"]], data.x[p["n_train"]:]
    truth = data.n_active[p["n_train"]:]
    out = Path(out_dir) if out_dir is not None else None
    results: dict = {"params": p, "models": {}}
    per_sample = {"true_active": truth.numpy()}
    for arch in ARCHS:
        model = make_sae(arch, d_model=p["d"], dict_size=p["dict_size"], k=p["k"], seed=p["seed"])
        t0 = time.perf_counter()
        trained = train_sae(model, x_train, train_config(p, arch))
        seconds = time.perf_counter() - t0
        ev = evaluate_sae(model, x_test, return_per_sample=True)
        ps = ev.pop("per_sample")
        entry = {**ev, "train_seconds": seconds,
                 "spearman_l0_vs_true_active": _spearman(ps["l0"], truth)}
        per_sample[f"{arch}_l0"] = ps["l0"].numpy()
        if "k_hat" in ps:
            entry["spearman_khat_vs_true_active"] = _spearman(ps["k_hat"], truth)
            per_sample[f"{arch}_k_hat"] = ps["k_hat"].numpy()
        results["models"][arch] = entry
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            trained.history.to_csv(out / f"history_{arch}.csv", index=False)
            save_sae(model, out / f"sae_{arch}", metadata={"experiment": "superposition", "params": p})
    results["provenance"] = provenance()
    if out is not None:
        pd.DataFrame(per_sample).to_csv(out / "per_sample.csv", index=False)
        atomic_write_text(out / "metrics.json", json.dumps(results, indent=2))
    return results
