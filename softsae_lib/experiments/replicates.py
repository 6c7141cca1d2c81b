"""Matched training with several SoftSAE seeds, their health, and per-seed tests of k̂ (issue 12 §1, §3).

Notebooks 03 and 04 train, at each target k, SoftSAE first and the baselines at its realised mean L0
(:mod:`softsae_lib.experiments.matched`), and in addition SoftSAE with further seeds at the one k
their k̂ claims rest on. :func:`train_matched_seeds` schedules these trainings as independent jobs on
``workers`` single-threaded processes (:func:`softsae_lib.experiments.parallel.run_jobs`): first the
SoftSAE anchors (plus as many extra seeds as fill the workers), then the baselines at the anchors'
matched L0 (plus the remaining seeds). Results equal those of sequential training up to float
summation order (one thread per job instead of several).

:func:`health_tables` and :func:`verdicts` turn the trainings' histories into the health table of
every model and the verdict of every headline result; :func:`explanation_lengths` measures how many
decoder atoms a trained dictionary needs per sample (the direct test of "k̂ is an explanation length").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd
import torch

from softsae_lib.experiments.controls import budget_tolerance, explanation_length
from softsae_lib.experiments.matched import BASELINES, TrainedModel, association_table, fit_and_evaluate
from softsae_lib.experiments.parallel import run_jobs
from softsae_lib.experiments.seeds import seed_association
from softsae_lib.plots import save_figure, training_curves
from softsae_lib.saes import SAE
from softsae_lib.settings import ReplicatedSAE, SAEExperiment
from softsae_lib.training.health import HealthCriteria, health_report, health_summary, verdict


@dataclass
class MatchedRuns:
    """Every model of a matched experiment with SoftSAE seeds."""

    grid: dict[int, dict[str, TrainedModel]]
    """{target k: {arch: model}} at the experiment's seed (the shape of ``train_matched_grid``)."""
    seeds: dict[int, TrainedModel]
    """{seed: SoftSAE} at ``claim_k`` (the experiment's own seed included, first)."""
    claim_k: int
    """The target k the per-seed k̂ results use."""
    seed_baselines: dict[tuple[str, int], TrainedModel] = field(default_factory=dict)
    """{(arch, seed): model}: baselines trained again for SoftSAE's further seeds, at the anchor's
    matched L0 at ``claim_k`` (e.g. TopK dictionaries for a per-seed explanation-length test)."""

    def seed_models(self, arch: str) -> dict[int, TrainedModel]:
        """{seed: model} of ``arch`` at ``claim_k``, the anchor seed first: SoftSAE's seeds, or a
        baseline's anchor model and its further seeds (only those it was trained for)."""
        if arch == "soft":
            return dict(self.seeds)
        anchor = next(iter(self.seeds))
        return {anchor: self.grid[self.claim_k][arch],
                **{s: m for (a, s), m in self.seed_baselines.items() if a == arch}}

    def histories(self) -> dict[str, pd.DataFrame]:
        """{label: history} of every distinct model, labelled ``"<arch> k=<target> s<seed>"``."""
        seed0 = next(iter(self.seeds))
        out = {model_label(arch, k, seed0): m.history for k, models in self.grid.items()
               for arch, m in models.items()}
        out.update({model_label("soft", self.claim_k, s): m.history for s, m in self.seeds.items()})
        out.update({model_label(a, self.claim_k, s): m.history for (a, s), m in self.seed_baselines.items()})
        return out


def stacked_histories(histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every model's training history in one long frame with a leading ``model`` column (for a CSV)."""
    return pd.concat([h.assign(model=name) for name, h in histories.items()], ignore_index=True)[
        ["model", *dict.fromkeys(c for h in histories.values() for c in h.columns)]]


def model_label(arch: str, k_target: int, seed: int) -> str:
    """The label of one trained model in health tables and figures."""
    return f"{arch} k={k_target} s{seed}"


def train_matched_seeds(x_train, x_test: torch.Tensor, p: SAEExperiment, ks: Sequence[int], claim_k: int,
                        seeds: Sequence[int], baselines: Sequence[str] = BASELINES, workers: int = 1,
                        log: Callable[[str], None] = print,
                        seed_baselines: Sequence[str] = ()) -> MatchedRuns:
    """SoftSAE at each k of ``ks`` (seed ``p.seed``), each baseline at its realised mean L0, and SoftSAE
    at ``claim_k`` for every other seed of ``seeds`` (with each baseline of ``seed_baselines`` too, at
    the anchor seed's matched L0 at ``claim_k``).

    Args:
        x_train: (N, d) training activations (or a batch source ``fit_and_evaluate`` accepts; with
            ``workers > 1`` it must be picklable: tensors travel through shared memory).
        x_test: (N_test, d) held-out activations every model is evaluated on.
        p: the experiment's settings (``p.seed`` is the anchor seed).
        ks: SoftSAE target k values; ``claim_k`` must be one of them.
        seeds: SoftSAE seeds at ``claim_k`` (``p.seed`` is added if missing).
        baselines: architectures trained at SoftSAE's matched L0.
        workers: processes (1: in this process, sequentially).
        seed_baselines: baselines (of ``baselines``) also trained with every further seed.

    Returns:
        :class:`MatchedRuns`.
    """
    if claim_k not in ks:
        raise ValueError(f"claim_k={claim_k} is not one of ks={tuple(ks)}")
    if not set(seed_baselines) <= set(baselines):
        raise ValueError(f"seed_baselines {tuple(seed_baselines)} must be among baselines {tuple(baselines)}")
    extra = [s for s in dict.fromkeys(seeds) if s != p.seed]
    fill = (-len(ks)) % max(1, workers)
    first = {("soft", k, p.seed): partial(fit_and_evaluate, "soft", k, x_train, x_test, p.replace(k=k))
             for k in ks}
    for s in extra[:fill]:
        first[("soft", claim_k, s)] = partial(fit_and_evaluate, "soft", claim_k, x_train, x_test,
                                              p.replace(k=claim_k, seed=s))
    done = run_jobs(first, workers)
    second = {}
    for k in ks:
        soft = done[("soft", k, p.seed)]
        matched = max(1, int(round(soft.metrics["l0"]["mean"])))
        log(f"SoftSAE k={k}: mean k̂ {soft.metrics['k_hat']['mean']:.2f}, realised mean L0 "
            f"{soft.metrics['l0']['mean']:.2f} → baselines trained at k = {matched}")
        for arch in baselines:
            second[(arch, k, p.seed)] = partial(fit_and_evaluate, arch, matched, x_train, x_test,
                                                p.replace(k=matched))
            for s in extra if k == claim_k and arch in seed_baselines else ():
                second[(arch, k, s)] = partial(fit_and_evaluate, arch, matched, x_train, x_test,
                                               p.replace(k=matched, seed=s))
    for s in extra[fill:]:
        second[("soft", claim_k, s)] = partial(fit_and_evaluate, "soft", claim_k, x_train, x_test,
                                               p.replace(k=claim_k, seed=s))
    done.update(run_jobs(second, workers))
    grid = {k: {arch: done[(arch, k, p.seed)] for arch in ("soft", *baselines)} for k in ks}
    seed_models = {s: done[("soft", claim_k, s)] for s in (p.seed, *extra)}
    again = {(arch, s): done[(arch, claim_k, s)] for arch in seed_baselines for s in extra}
    return MatchedRuns(grid=grid, seeds=seed_models, claim_k=claim_k, seed_baselines=again)


def data_passes(steps: int, batch_size: int, n_train: int) -> dict[str, float]:
    """``samples_seen`` (steps × batch) and ``epochs`` (samples_seen / n_train) of one training run."""
    seen = int(steps) * int(batch_size)
    return {"samples_seen": seen, "train_samples": int(n_train), "epochs": seen / max(1, int(n_train))}


def health_tables(histories: dict[str, pd.DataFrame],
                  criteria: HealthCriteria | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(report, summary): :func:`health_report` of every model (long, one row per check) and
    :func:`health_summary` with, per model, the measured value of every check as extra columns."""
    report = health_report(histories, criteria)
    values = report.pivot_table(index="model", columns="check", values="value", sort=False)
    summary = health_summary(report).merge(values.reset_index(), on="model", how="left")
    return report, summary


def report_health(histories: dict[str, pd.DataFrame], title: str, figure_path=None,
                  criteria: HealthCriteria | None = None):
    """The training-health section of a notebook: prints the long :func:`health_tables` report, draws
    :func:`softsae_lib.plots.training_curves` (saved to ``figure_path`` when given).

    Returns:
        (report, summary, figure).
    """
    report, summary = health_tables(histories, criteria)
    with pd.option_context("display.max_colwidth", 90, "display.width", 200):
        print(report.to_string(index=False))
    fig = training_curves(histories, title=title)
    if figure_path is not None:
        save_figure(fig, figure_path)
    return report, summary, fig


def verdicts(summary: pd.DataFrame, rests_on: dict[str, Sequence[str]]) -> dict[str, str]:
    """{result: 'conclusive' | 'inconclusive'}: conclusive only when every model the result rests on
    (labels of ``summary['model']``) is healthy. A label missing from the summary is an error."""
    healthy = dict(zip(summary["model"], summary["healthy"], strict=True))
    missing = sorted({m for models in rests_on.values() for m in models} - set(healthy))
    if missing:
        raise KeyError(f"verdicts: no health entry for {missing}")
    return {name: verdict([bool(healthy[m]) for m in models], seeds=_fewest_seeds(models))
            for name, models in rests_on.items()}


def _fewest_seeds(labels: Sequence[str]) -> int:
    """The fewest seeds any architecture among :func:`model_label` labels has (a result resting on one
    seed of a model is not yet a result)."""
    seeds: dict[str, set[str]] = {}
    for label in labels:
        arch, _, seed = label.rpartition(" s")
        seeds.setdefault(arch.split(" ")[0], set()).add(seed)
    return min(len(v) for v in seeds.values())


def pooled_claim(seed_assoc: pd.DataFrame, kappa: str, target: str, text: str, verdict_: str, rests_on: str,
                 judged_against: str = "") -> dict:
    """The README claim of a pooled per-seed association row (:func:`per_seed_associations` output)."""
    from softsae_lib.readme_results import claim

    row = seed_assoc[(seed_assoc["kappa"] == kappa) & (seed_assoc["target"] == target)
                     & (seed_assoc["seed"].astype(str) == "pooled")].iloc[0]
    return claim(text, row["spearman"], row["spearman_ci_low"], row["spearman_ci_high"], verdict_,
                 judged_against, rests_on)


def readme_models(table: pd.DataFrame, summary: pd.DataFrame, k_of_row, seed: int) -> list[dict]:
    """README model rows from a models table (columns model, fvu, l0_mean, dead_fraction) and the health
    summary; ``k_of_row(row)`` gives the row's target k (its :func:`model_label`)."""
    healthy = dict(zip(summary["model"], summary["healthy"], strict=True))
    return [{"model": f"{r['model']} (k = {k_of_row(r)})", "fvu": r["fvu"], "l0": r["l0_mean"],
             "dead": r["dead_fraction"], "healthy": bool(healthy[model_label(r["model"], k_of_row(r), seed)])}
            for r in table.to_dict("records")]


def explanation_lengths(model: SAE, x: torch.Tensor, budget: float, max_atoms: int,
                        tolerance: float | None = None) -> tuple[np.ndarray, dict]:
    """Atoms of ``model``'s decoder OMP needs to explain each row of ``x`` (N, d) to a fixed relative error.

    Args:
        model: a trained SAE (typically TopK at the matched budget).
        x: (N, d) raw held-out samples.
        budget: the matched mean L0; with ``tolerance=None`` the tolerance is the median relative error
            OMP reaches with ``round(budget)`` atoms (:func:`budget_tolerance`), so the median sample
            needs about ``budget`` atoms.
        max_atoms: length of the pursuit; samples that do not reach the tolerance get ``max_atoms + 1``
            (censored; their share is reported).
        tolerance: fixed relative squared error ‖x − x̂‖²/‖x‖², or None (see ``budget``).

    Returns:
        ((N,) int atoms needed, info dict with ``tolerance``, ``max_atoms``, ``censored_share``,
        ``median_atoms``, ``mean_atoms``, ``rel_error_at_budget`` (median)).
    """
    path = explanation_length(model, x, max_atoms)[1]
    at_budget = budget_tolerance(path, budget)
    tol = at_budget if tolerance is None else float(tolerance)
    atoms = path.atoms_needed(tol).numpy()
    rule = "median error at the budget" if tolerance is None else "fixed"
    info = {"tolerance": tol, "tolerance_rule": rule,
            "budget": float(budget), "max_atoms": int(max_atoms),
            "censored_share": float((atoms > max_atoms).mean()), "median_atoms": float(np.median(atoms)),
            "mean_atoms": float(atoms.mean()), "rel_error_at_budget": at_budget}
    return atoms, info


def per_seed_associations(frames: dict[int, pd.DataFrame], kappa: str, targets: Sequence[str],
                          clusters: str | None, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """:func:`seed_association` of ``kappa`` with each target, stacked: per-seed rows and a pooled row
    for every target (columns as there)."""
    tables = [seed_association(frames, kappa, t, clusters, n_boot=n_boot, seed=seed) for t in targets]
    return pd.concat(tables, ignore_index=True)


def seed_frames(models: dict[int, TrainedModel], rows: np.ndarray,
                **columns: np.ndarray) -> dict[int, pd.DataFrame]:
    """{seed: per-sample frame} of SoftSAE seeds on the held-out samples ``rows``: ``soft_k_hat`` and
    ``soft_l0`` of each seed there, plus ``columns`` (each aligned with ``rows``: shape (len(rows),))."""
    rows = np.asarray(rows)
    return {s: pd.DataFrame({"soft_k_hat": m.per_sample["k_hat"].numpy()[rows],
                             "soft_l0": m.per_sample["l0"].numpy()[rows],
                             **{name: np.asarray(v) for name, v in columns.items()}})
            for s, m in models.items()}


@dataclass
class ExplanationTest:
    """Explanation lengths of held-out samples and their association with k̂ and other per-sample values."""

    info: dict
    """:func:`explanation_lengths` settings and summary of the first seed's dictionary, plus ``n``
    and ``per_seed`` ({seed: that summary} for every seed's dictionary)."""
    frames: dict[int, pd.DataFrame]
    """{seed: per-sample frame}: ``soft_k_hat``, ``soft_l0``, ``explanation_length`` and the other columns."""
    per_seed: pd.DataFrame
    """ρ(k̂, explanation length) per seed and pooled (:func:`per_seed_associations`)."""
    others: pd.DataFrame
    """ρ(column, explanation length) for every other column, at the first seed (``association_table``)."""


def explanation_test(topk: TrainedModel | dict[int, TrainedModel], x_test: torch.Tensor, rows: np.ndarray,
                     seeds: dict[int, TrainedModel], clusters: np.ndarray, others: dict[str, np.ndarray],
                     p: ReplicatedSAE) -> ExplanationTest:
    """The direct test of "k̂ is an explanation length" on the held-out samples ``rows``.

    Args:
        topk: the TopK model at the matched budget whose decoder is the dictionary, or {seed: model}
            with one per SoftSAE seed: seed s's k̂ is then tested against the lengths on seed s's
            dictionary, so that each seed replicates the whole test.
        x_test: (N_test, d) held-out samples; ``rows`` (n,) selects the tested ones.
        seeds: {seed: SoftSAE} evaluated on all of ``x_test``.
        clusters: (n,) cluster of each tested sample (bootstrap unit).
        others: {name: (n,) values}: further per-sample columns tested against the explanation length.
        p: settings (``explain_max_atoms``, ``explain_tolerance``, ``n_boot``, ``seed``).
    """
    topks = topk if isinstance(topk, dict) else dict.fromkeys(seeds, topk)
    if set(topks) != set(seeds):
        raise ValueError(f"explanation_test: TopK models for seeds {sorted(topks)}, "
                         f"SoftSAE seeds {sorted(seeds)}")
    lengths: dict[int, tuple[np.ndarray, dict]] = {}  # by id(model): one pursuit per dictionary
    per_seed_info, frames = {}, {}
    for s, soft in seeds.items():
        m = topks[s].model
        if id(m) not in lengths:
            budget = float(m.config.k)
            max_atoms = p.explain_max_atoms or int(2 * budget)
            lengths[id(m)] = explanation_lengths(m, x_test[rows], budget, max_atoms, p.explain_tolerance)
        atoms, per_seed_info[s] = lengths[id(m)]
        frames.update(seed_frames({s: soft}, rows, explanation_length=atoms, cluster=clusters, **others))
    info = {**per_seed_info[next(iter(seeds))], "per_seed": per_seed_info}
    target = ["explanation_length"]
    per_seed = per_seed_associations(frames, "soft_k_hat", target, "cluster", n_boot=p.n_boot, seed=p.seed)
    first = frames[next(iter(frames))]
    table = association_table(first, list(others), target, clusters="cluster", n_boot=p.n_boot, seed=p.seed)
    return ExplanationTest({**info, "n": int(len(rows))}, frames, per_seed, table)
