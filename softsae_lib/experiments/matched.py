"""Train SoftSAE and fixed-budget baselines at matched mean L0, and tabulate per-sample sparsity.

Matching: SoftSAE is trained first with target k; its realised mean hard L0 on held-out data
(below k, since mean k̂ settles under the target and inference floors it) becomes the k of TopK
and BatchTopK, so all three are compared at the same mean number of active latents.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from softsae_lib.evaluation import evaluate_sae
from softsae_lib.experiments.parallel import run_jobs
from softsae_lib.saes import ARCHITECTURES, SAE, make_sae
from softsae_lib.settings import SAEExperiment
from softsae_lib.stats import summarize_association
from softsae_lib.training import TrainConfig, train_sae

BASELINES = ("topk", "batch_topk")
HELDOUT_ROWS = 2048
"""Held-out rows whose FVU the trainer logs for the plateau check (the same rows at every logged
step, so the change across the window is measured on a paired sample)."""


@dataclass
class TrainedModel:
    arch: str
    model: SAE
    history: pd.DataFrame
    metrics: dict
    """evaluate_sae on the held-out data (without per-sample tensors)."""
    per_sample: dict[str, torch.Tensor]
    """(N_test,) tensors: 'l0', and 'k_hat' for SoftSAE."""
    train_seconds: float


def dead_threshold(p: SAEExperiment) -> int:
    """Samples without firing after which a latent counts as dead (default: 50 batches)."""
    return p.dead_threshold if p.dead_threshold is not None else 50 * p.batch_size


def train_config(p: SAEExperiment, arch: str) -> TrainConfig:
    """The schedule shared by every model of an experiment.

    k anneals from d over the first 5 % of the steps for every architecture while
    ``p.baseline_k_anneal`` is True, else only for those whose published recipe anneals k
    (``recipe_anneals_k``: SoftSAE). An architecture's own schedules (SoftSAE's α anneal and hard
    phase) are fields of its model config, set by :func:`model_config`.
    """
    steps = p.steps
    anneal_k = p.baseline_k_anneal or ARCHITECTURES[arch].recipe_anneals_k
    return TrainConfig(
        steps=steps, batch_size=p.batch_size, lr=p.lr, warmup_steps=max(1, steps // 20),
        decay_start=int(0.8 * steps), k_anneal_steps=max(1, steps // 20) if anneal_k else None,
        dead_threshold=dead_threshold(p), seed=p.seed,
        log_every=max(1, steps // 100), progress=p.progress, device=p.device,
    )


def model_config(p: SAEExperiment, arch: str, config: dict) -> dict:
    """Config kwargs of ``arch`` in experiment ``p``: the architecture's own recipe
    (:meth:`SAE.recipe_config`, e.g. SoftSAE's hard phase over the last tenth of the run and
    ``p.alpha_anneal_fraction``) under the explicit ``config``."""
    return {**ARCHITECTURES[arch].recipe_config(p), **config}


def fit_and_evaluate(arch: str, k: int, x_train: torch.Tensor, x_test: torch.Tensor, p: SAEExperiment,
                     config: dict | None = None,
                     after_training: Callable[[SAE], None] | None = None) -> TrainedModel:
    """Train ``arch`` with budget ``k`` (or the explicit ``config`` kwargs) and evaluate it on x_test.

    ``after_training(model)`` runs before evaluation (e.g. inference-threshold calibration); its time
    is not part of ``train_seconds``.
    """
    config = {"k": k} if config is None else config
    model = make_sae(arch, d_model=x_train.shape[1], dict_size=p.dict_size, seed=p.seed,
                     **model_config(p, arch, config))
    t0 = time.perf_counter()
    # The held-out FVU from mid-run on: the plateau check reads only the late constant-lr steps.
    cfg = train_config(p, arch)
    result = train_sae(model, x_train, cfg, heldout=x_test[:HELDOUT_ROWS], heldout_from=cfg.steps // 2)
    seconds = time.perf_counter() - t0
    if after_training is not None:
        after_training(model)
    metrics = evaluate_sae(model, x_test, return_per_sample=True)
    per_sample = metrics.pop("per_sample")
    return TrainedModel(arch, model, result.history, metrics, per_sample, seconds)


def train_matched(x_train: torch.Tensor, x_test: torch.Tensor, p: SAEExperiment,
                  baselines: tuple[str, ...] = BASELINES, log=print,
                  configure: Callable[[str, int], dict] | None = None,
                  after_training: Callable[[SAE], None] | None = None,
                  workers: int = 1) -> dict[str, TrainedModel]:
    """SoftSAE at target ``p.k``, then each baseline at SoftSAE's realised mean L0 (rounded).

    ``configure(arch, k)`` gives the config kwargs that put ``arch`` at budget k (default ``{"k": k}``);
    ``after_training`` is passed to :func:`fit_and_evaluate` (it must pickle when ``workers`` > 1: a
    module-level function or a ``functools.partial`` of one). The baselines train in ``workers``
    single-threaded processes (:func:`~softsae_lib.experiments.parallel.run_jobs`; same results).
    """
    configure = configure or (lambda arch, k: {"k": k})
    out = {"soft": fit_and_evaluate("soft", p.k, x_train, x_test, p, configure("soft", p.k),
                                    after_training)}
    matched_k = max(1, int(round(out["soft"].metrics["l0"]["mean"])))
    log(f"SoftSAE: mean k̂ {out['soft'].metrics['k_hat']['mean']:.2f}, realised mean L0 "
        f"{out['soft'].metrics['l0']['mean']:.2f} → baselines trained at k = {matched_k}")
    jobs = {arch: functools.partial(fit_and_evaluate, arch, matched_k, x_train, x_test, p,
                                    configure(arch, matched_k), after_training)
            for arch in baselines}
    out.update(run_jobs(jobs, workers))
    return out


def summary_table(models: dict[str, TrainedModel]) -> pd.DataFrame:
    """One row per model: reconstruction and sparsity on held-out data."""
    rows = []
    for arch, m in models.items():
        rows.append({"model": arch, "k": getattr(m.model.config, "k", np.nan), "fvu": m.metrics["fvu"],
                     "cosine": m.metrics["cosine"], "l0_mean": m.metrics["l0"]["mean"],
                     "l0_std": m.metrics["l0"]["std"], "dead_fraction": m.metrics["dead_fraction"],
                     "k_hat_mean": m.metrics.get("k_hat", {}).get("mean", np.nan),
                     "train_seconds": m.train_seconds})
    return pd.DataFrame(rows)


def per_sample_frame(models: dict[str, TrainedModel], **truth: np.ndarray | torch.Tensor) -> pd.DataFrame:
    """Columns ``<arch>_l0`` (and ``soft_k_hat``) plus the given ground-truth columns, one row per sample."""
    cols = {name: np.asarray(v) for name, v in truth.items()}
    for arch, m in models.items():
        for key, v in m.per_sample.items():
            cols[f"{arch}_{key}"] = v.numpy()
    return pd.DataFrame(cols)


def association_table(frame: pd.DataFrame, kappas: list[str], targets: list[str], clusters: str | None = None,
                      n_boot: int = 1000, seed: int = 0, covariates: list[str] | None = None) -> pd.DataFrame:
    """Spearman/Pearson/Kendall (+ cluster-bootstrap CI) of each sparsity column against each target.

    ``covariates`` (column names) adds the partial Spearman correlation controlling for them.
    A column that is constant (TopK's L0, by construction) gets a row of NaN with ``note`` saying so.
    """
    rows = []
    for kappa in kappas:
        for target in targets:
            row = {"kappa": kappa, "target": target}
            if frame[kappa].nunique() < 2:
                row["note"] = "constant: correlation undefined"
            else:
                cl = frame[clusters].to_numpy() if clusters else None
                cov = frame[covariates].to_numpy(dtype=float) if covariates else None
                row.update(summarize_association(frame[kappa].to_numpy(), frame[target].to_numpy(),
                                                 covariates=cov, clusters=cl, n_boot=n_boot, seed=seed))
                row["note"] = ""
            rows.append(row)
    return pd.DataFrame(rows)


def train_matched_grid(x_train, x_test: torch.Tensor, p: SAEExperiment, ks: tuple[int, ...] | list[int],
                       baselines: tuple[str, ...] = BASELINES,
                       log=print) -> dict[int, dict[str, TrainedModel]]:
    """:func:`train_matched` at each SoftSAE target k of ``ks``: {k: {arch: model}} (an L0 frontier)."""
    return {k: train_matched(x_train, x_test, p.replace(k=k), baselines=baselines, log=log) for k in ks}


def grid_summary_table(grid: dict[int, dict[str, TrainedModel]]) -> pd.DataFrame:
    """:func:`summary_table` of every grid point, with the SoftSAE target ``k_target`` as first column."""
    table = pd.concat([summary_table(models).assign(k_target=k) for k, models in grid.items()],
                      ignore_index=True)
    return table[["k_target", *[c for c in table.columns if c != "k_target"]]]
