"""Notebook 02's experiments on data with known truth: every arm over seeds, with health and controls.

Three arms (``docs/sae-variants.md``, the k̂-vs-LID tests):

* ``manifolds``: the curved-manifold mixture (truth: each sample's intrinsic dimension);
* ``subspaces``: a union of linear subspaces (truth and exact oracle: d atoms per sample);
* ``superposition``: sparse non-negative combinations of true features (truth: the active count).

Each (arm, seed) is one job (:func:`softsae_lib.experiments.matched.train_matched`: SoftSAE, then the
baselines at its realised mean L0), and each ablation one SoftSAE job; :func:`jobs` builds them all so
that a notebook trains everything in one :func:`~softsae_lib.experiments.parallel.run_jobs` call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable

import numpy as np
import pandas as pd
import torch

from softsae_lib.experiments.matched import TrainedModel, fit_and_evaluate, per_sample_frame, train_matched
from softsae_lib.settings import SAEExperiment, SyntheticManifolds
from softsae_lib.stats import summarize_association
from softsae_lib.training.health import health_report, health_summary

Runs = dict[int, dict[str, TrainedModel]]
"""{seed: {arch: trained model}} of one arm."""


def quiet(*_args: object) -> None:
    """A ``log`` that prints nothing (jobs in worker processes have no notebook to print to)."""


def matched_jobs(arm: str, x_train: torch.Tensor, x_test: torch.Tensor, p: SAEExperiment,
                 seeds: tuple[int, ...],
                 baselines: tuple[str, ...], configure: Callable[[str, int], dict] | None = None
                 ) -> dict[Hashable, Callable[[], dict[str, TrainedModel]]]:
    """One :func:`train_matched` job per seed, keyed ``(arm, seed)``; the seed sets initialisation and batch
    order (the data stay as given)."""
    return {(arm, s): functools.partial(train_matched, x_train, x_test, p.replace(seed=s),
                                        baselines=baselines,
                                        log=quiet, configure=configure)
            for s in seeds}


def collect(runs: dict, arm: str) -> Runs:
    """The ``(arm, seed)`` results of :func:`run_jobs` as {seed: {arch: model}}."""
    return {key[1]: value for key, value in runs.items() if isinstance(key, tuple) and key[0] == arm}


def histories(runs: Runs, archs: tuple[str, ...] | None = None) -> dict[str, pd.DataFrame]:
    """{"<arch> s<seed>": training history} of every model of an arm (the health report's input)."""
    return {f"{arch} s{seed}": m.history for seed, models in runs.items() for arch, m in models.items()
            if archs is None or arch in archs}


def health(runs: Runs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(health report, per-model summary) of every model of an arm."""
    report = health_report(histories(runs))
    return report, health_summary(report)


def all_healthy(summary: pd.DataFrame, archs: tuple[str, ...] | None = None) -> list[bool]:
    """The ``healthy`` flags of the models of ``archs`` (all when None) in a health summary."""
    keep = summary["model"].str.split(" ").str[0].isin(archs) if archs else slice(None)
    return summary.loc[keep, "healthy"].astype(bool).tolist()


def models_table(runs: Runs, summary: pd.DataFrame) -> list[dict]:
    """One row per (seed, model): its k, held-out FVU, mean L0 (and mean k̂), dead fraction, health verdict."""
    healthy = dict(zip(summary["model"], summary["healthy"], strict=True))
    rows = []
    for seed, models in runs.items():
        for arch, m in models.items():
            rows.append({"model": arch, "seed": seed, "k": getattr(m.model.config, "k", None),
                         "fvu": m.metrics["fvu"], "l0": m.metrics["l0"]["mean"],
                         "k_hat_mean": m.metrics.get("k_hat", {}).get("mean"),
                         "dead": m.metrics["dead_fraction"],
                         "healthy": bool(healthy[f"{arch} s{seed}"])})
    return rows


def seed_frames(runs: Runs, **truth) -> dict[int, pd.DataFrame]:
    """{seed: per-sample frame} with each model's sparsity columns and the given truth columns."""
    return {seed: per_sample_frame(models, **truth) for seed, models in runs.items()}


# ---------------------------------------------------------------------------------------- ablations
ABLATIONS: dict[str, str] = {
    "twice_the_steps": "the same recipe trained twice as many steps: does the result survive a longer run?",
    "half_the_steps": "the same recipe trained half as many steps: does the result depend on the step count?",
    "alpha_annealed": "α annealed 1 → α over the first 20% of the steps (the LLM recipe) instead of fixed",
    "k_max_4k": "k̂'s upper end k_max = 4k instead of 2k",
    "no_hard_phase": "no final hard top-⌊k̂⌋ phase (instead of the last 10% of the steps)",
    "long_hard_phase": "the last 25% of the steps in the hard phase (instead of 10%)",
    "official_dead_rule": "a latent fires when r·p > 0 (the official code) instead of when the hard top-⌊k̂⌋ "
                          "selects it",
}
"""SoftSAE recipe variants (name → what changes); each is trained once on the manifold arm."""

STEP_CONTROLS: dict[str, float] = {"twice_the_steps": 2.0, "half_the_steps": 0.5}
"""The ablations that change only the number of steps (name → factor on ``steps``)."""


def _ablation_settings(name: str, p: SAEExperiment) -> tuple[SAEExperiment, dict]:
    """(experiment settings, SoftSAE config kwargs) of ablation ``name``."""
    if name in STEP_CONTROLS:
        return p.replace(steps=max(1, round(STEP_CONTROLS[name] * p.steps))), {"k": p.k}
    if name == "alpha_annealed":
        return p.replace(alpha_anneal_fraction=0.2), {"k": p.k}
    if name == "k_max_4k":
        return p, {"k": p.k, "k_max": 4.0 * p.k}
    if name in ("no_hard_phase", "long_hard_phase"):
        return p, {"k": p.k, "hard_phase_fraction": 0.0 if name == "no_hard_phase" else 0.25}
    if name == "official_dead_rule":
        return p, {"k": p.k, "fired_rule": "soft_positive"}
    raise ValueError(f"unknown ablation {name!r}; known: {sorted(ABLATIONS)}")


def _train_ablation(name: str, x_train: torch.Tensor, x_test: torch.Tensor, p: SAEExperiment) -> TrainedModel:
    settings, config = _ablation_settings(name, p)
    return fit_and_evaluate("soft", p.k, x_train, x_test, settings, config)


def ablation_jobs(x_train: torch.Tensor, x_test: torch.Tensor, p: SyntheticManifolds, names: tuple[str, ...]
                  ) -> dict[Hashable, Callable[[], TrainedModel]]:
    """One SoftSAE job per ablation, keyed ``("ablation", name)`` (seed ``p.seeds[0]``)."""
    for name in names:
        _ablation_settings(name, p)  # unknown names fail here, before any training
    s = p.seeds[0]
    return {("ablation", name): functools.partial(_train_ablation, name, x_train, x_test, p.replace(seed=s))
            for name in names}


def baseline_anneal_jobs(x_train: torch.Tensor, x_test: torch.Tensor, p: SyntheticManifolds, k: int,
                         baselines: tuple[str, ...]) -> dict[Hashable, Callable[[], TrainedModel]]:
    """Each baseline at budget ``k`` with k annealed from d (the SoftSAE recipe's anneal), keyed
    ``("k_anneal", arch)``: the ablation of giving the baselines SoftSAE's k schedule."""
    q = p.replace(baseline_k_anneal=True, seed=p.seeds[0])
    return {("k_anneal", arch): functools.partial(fit_and_evaluate, arch, k, x_train, x_test, q)
            for arch in baselines}


def ablation_table(variants: dict[str, tuple[str, TrainedModel]], truth: dict[str, np.ndarray],
                   n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per variant {name: (what changed, model)}: FVU, mean L0, dead fraction, Spearman of the
    model's per-sample budget (k̂, else L0; NaN where it is constant) with ``truth["true_dim"]`` (cluster
    CI over ``truth["manifold"]``), and its health (failed checks named)."""
    report = health_report({n: m.history for n, (_, m) in variants.items()})
    summary = health_summary(report).set_index("model")
    rows = []
    for name, (change, m) in variants.items():
        kappa = (m.per_sample["k_hat"] if "k_hat" in m.per_sample else m.per_sample["l0"]).numpy()
        assoc = (summarize_association(kappa, truth["true_dim"], clusters=truth["manifold"], n_boot=n_boot,
                                       seed=seed) if np.unique(kappa).size > 1 else {})
        rows.append({"variant": name, "change": change, "fvu": m.metrics["fvu"],
                     "l0": m.metrics["l0"]["mean"],
                     "dead": m.metrics["dead_fraction"], "spearman_budget_dim": assoc.get("spearman", np.nan),
                     "ci_low": assoc.get("spearman_ci_low", np.nan),
                     "ci_high": assoc.get("spearman_ci_high", np.nan),
                     "healthy": bool(summary.loc[name, "healthy"]), "failed": summary.loc[name, "failed"]})
    return pd.DataFrame(rows)
