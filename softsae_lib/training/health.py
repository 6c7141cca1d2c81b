"""Is a trained SAE fit to draw conclusions from? Pass/fail checks read off its training history.

An undertrained model is not evidence (issue 12: 87% of SoftSAE's latents were dead after 4000
steps and its k̂ barely varied; after 12000 steps ρ(k̂, true dimension) was 0.83–0.88). Every
notebook therefore prints :func:`check_health` for each model it trains and calls a result
*inconclusive* when a model it rests on fails.

The checks (thresholds in :class:`HealthCriteria`, all stated in the table they produce):

* ``finite``: every logged loss is finite, and after the first ``settle`` share of the steps the batch
  FVU never exceeded ``max_fvu`` (at step 0 a random decoder with k annealed from d gives FVU ≈ 6 for a
  few steps; that is initialisation, not divergence).
* ``converged``: the reconstruction has plateaued. Over the last ``window`` share of the
  *constant-learning-rate* steps (before the lr decay and any special phase such as SoftSAE's hard
  top-k, both of which move the loss for reasons other than learning), the mean FVU of the
  window's last quarter improves on that of its first quarter by less than ``max_improvement``.
  It reads, in this order of preference, the first column the window has in full:

  1. ``fvu_heldout``: the FVU on a fixed set of held-out rows (``train_sae(heldout=...)``). An SAE
     that sees the same rows every epoch keeps lowering their FVU by memorising them after its
     reconstruction of new data has stopped improving (in a trial on notebook 03's tokens a
     BatchTopK improved 8.1% over the window on training batches and 3.9% on held-out tokens,
     read on its inference path). The trainer logs the training objective's FVU on them, the
     quantity ``fvu_batch`` measures on the batch.
  2. ``fvu_mean``: each row's mean batch FVU since the previous row, i.e. every step. With a single
     logged batch every hundredth of the run the quarter means are noisy (on notebook 02's manifolds
     one SoftSAE gave 0.14 from single batches and 0.24 from every step), enough to move a model
     across the 5% line.
  3. ``fvu_batch``: the FVU of the logged batch.
* ``dead_stable`` / ``dead_ceiling``: the dead fraction changed by at most ``max_dead_change``
  over the last ``window`` share of all steps, and ends at most ``max_dead_fraction``.
* for models that report a per-sample budget (a ``k_hat_mean`` column, i.e. SoftSAE):
  ``k_binds``: at the end of the soft phase the batch-mean k̂ lies within ``k_tolerance`` (relative)
  of the target k, so the budget loss is what sets the mean; ``k_spread_stable``: the batch std of
  k̂ changed by at most ``max_spread_change`` (relative) over the same window as ``converged``.

Pure functions of a history :class:`pandas.DataFrame` with the trainer's columns (``step``,
``loss``, ``fvu_batch``, ``dead_fraction``, ``lr``, ``hard``, ``k``, and ``fvu_mean``,
``fvu_heldout``, ``k_hat_mean``/``k_hat_std`` when present).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

COLUMNS = ("check", "passed", "value", "threshold", "detail")


@dataclass(frozen=True)
class HealthCriteria:
    """Thresholds of the health checks (defaults are the ones every notebook uses)."""

    window: float = 0.2
    """Share of the steps the plateau and stability checks look at (the last 20%)."""
    max_improvement: float = 0.05
    """converged: largest relative FVU improvement across the window."""
    max_dead_fraction: float = 0.5
    """dead_ceiling: largest final share of dead latents."""
    max_dead_change: float = 0.05
    """dead_stable: largest absolute change of the dead fraction across the window."""
    k_tolerance: float = 0.2
    """k_binds: largest |mean k̂ − k| / k at the end of the soft phase. The budget loss is one-sided
    (softplus of mean k̂ − k), so a healthy SoftSAE may settle somewhat below k when reconstruction
    prefers fewer atoms (issue 18 measured 3.27 at k = 4, −18%; our manifold runs end 14–16% below);
    a mean far below means the budget loss is not what sets the mean budget."""
    max_spread_change: float = 0.25
    """k_spread_stable: largest relative change of std(k̂) across the window."""
    max_fvu: float = 2.0
    """finite: a batch FVU above this at a logged step after ``settle`` counts as divergence."""
    settle: float = 0.05
    """finite: share of the first steps (initialisation, k anneal) where a large FVU is not divergence."""


def _rows(check: str, passed: bool, value: float, threshold: str, detail: str) -> dict:
    return {"check": check, "passed": bool(passed), "value": float(value), "threshold": threshold,
            "detail": detail}


def _constant_lr_end(h: pd.DataFrame) -> int:
    """Row index (exclusive) where the constant-lr, ordinary-phase part of the run ends."""
    end = len(h)
    if "hard" in h and h["hard"].astype(bool).any():
        end = int(np.argmax(h["hard"].astype(bool).to_numpy()))
    if "lr" in h and end > 1:
        lr = h["lr"].to_numpy()[:end]
        peak = int(np.argmax(lr))
        decayed = np.nonzero(lr[peak:] < 0.99 * lr[peak])[0]
        if decayed.size:
            end = peak + int(decayed[0])
    return max(end, 1)


def _window(h: pd.DataFrame, end: int, share: float, total_steps: int) -> pd.DataFrame:
    """Rows of ``h[:end]`` whose step lies in the last ``share`` of all steps before row ``end``."""
    part = h.iloc[:end]
    last_step = float(part["step"].iloc[-1])
    return part[part["step"] >= last_step - share * total_steps]


def _quarters(values: np.ndarray) -> tuple[float, float]:
    """Means of the first and the last quarter (at least one value each) of ``values``."""
    q = max(1, len(values) // 4)
    return float(np.mean(values[:q])), float(np.mean(values[-q:]))


def check_health(history: pd.DataFrame, criteria: HealthCriteria | None = None) -> pd.DataFrame:
    """The health table of one trained model.

    Args:
        history: the trainer's history (``TrainResult.history``), one row per logged step.
        criteria: thresholds; defaults to :class:`HealthCriteria`.

    Returns:
        DataFrame with columns ``check, passed, value, threshold, detail``; one row per check.

    Raises:
        ValueError: the history is empty or lacks a column a check needs (named).
    """
    c = criteria or HealthCriteria()
    if len(history) < 2:
        raise ValueError(f"check_health: need at least 2 logged steps, got {len(history)}")
    missing = [col for col in ("step", "loss", "fvu_batch", "dead_fraction") if col not in history]
    if missing:
        raise ValueError(f"check_health: history lacks column(s) {missing}")
    h = history.reset_index(drop=True)
    total = float(h["step"].iloc[-1] - h["step"].iloc[0]) or 1.0
    rows = []

    loss_cols = [col for col in ("loss", "l2", "fvu_batch") if col in h]
    finite = bool(np.isfinite(h[loss_cols].to_numpy(dtype=float)).all())
    settled = h[h["step"] >= h["step"].iloc[0] + c.settle * total]
    worst = float(np.nanmax(settled["fvu_batch"].to_numpy(dtype=float))) if len(settled) else 0.0
    rows.append(_rows("finite", finite and worst <= c.max_fvu, worst, f"finite, max FVU ≤ {c.max_fvu}",
                      f"max batch FVU after the first {c.settle:.0%} of steps"
                      + ("" if finite else "; non-finite loss logged")))

    end = _constant_lr_end(h)
    win = _window(h, end, c.window, total)
    fvu_col = next((col for col in ("fvu_heldout", "fvu_mean", "fvu_batch")
                    if col in win and win[col].notna().all()), "fvu_batch")
    first, last = _quarters(win[fvu_col].to_numpy(dtype=float))
    gain = (first - last) / first if first > 0 else 0.0
    rows.append(_rows("converged", gain < c.max_improvement, gain, f"< {c.max_improvement}",
                      f"relative FVU gain over steps {int(win['step'].iloc[0])}–{int(win['step'].iloc[-1])} "
                      f"(constant lr, {fvu_col}): {first:.4g} → {last:.4g}"))

    tail = _window(h, len(h), c.window, total)
    dead = tail["dead_fraction"].to_numpy(dtype=float)
    change = float(np.max(dead) - np.min(dead))
    rows.append(_rows("dead_stable", change <= c.max_dead_change, change, f"≤ {c.max_dead_change}",
                      f"range of the dead fraction over the last {c.window:.0%} of steps"))
    rows.append(_rows("dead_ceiling", dead[-1] <= c.max_dead_fraction, dead[-1], f"≤ {c.max_dead_fraction}",
                      "final dead fraction"))

    if "k_hat_mean" in h:
        hard = h["hard"].astype(bool).to_numpy()
        soft_end = int(np.argmax(hard)) if hard.any() else len(h)
        soft = h.iloc[:max(soft_end, 1)]
        n_end = max(1, len(soft) // 20)
        k_mean = float(soft["k_hat_mean"].iloc[-n_end:].mean())
        k_target = float(soft["k"].iloc[-1])
        rel = abs(k_mean - k_target) / k_target if k_target > 0 else math.inf
        rows.append(_rows("k_binds", rel <= c.k_tolerance, rel, f"≤ {c.k_tolerance}",
                          f"batch-mean k̂ {k_mean:.3g} vs target {k_target:g} at the end of the soft phase"))
        s_first, s_last = _quarters(win["k_hat_std"].to_numpy(dtype=float))
        s_change = abs(s_last - s_first) / s_first if s_first > 0 else math.inf
        rows.append(_rows("k_spread_stable", s_change <= c.max_spread_change, s_change,
                          f"≤ {c.max_spread_change}",
                          f"std(k̂) {s_first:.3g} → {s_last:.3g} over the same window"))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def is_healthy(table: pd.DataFrame) -> bool:
    """True when every check of a :func:`check_health` table passed."""
    return bool(table["passed"].all())


def health_report(histories: dict[str, pd.DataFrame], criteria: HealthCriteria | None = None) -> pd.DataFrame:
    """:func:`check_health` of several models stacked, with a leading ``model`` column."""
    tables = [check_health(h, criteria).assign(model=name) for name, h in histories.items()]
    out = pd.concat(tables, ignore_index=True)
    return out[["model", *COLUMNS]]


def health_summary(report: pd.DataFrame) -> pd.DataFrame:
    """One row per model of a :func:`health_report`: ``healthy`` and the names of the failed checks."""
    rows = []
    for name, part in report.groupby("model", sort=False):
        failed = part.loc[~part["passed"], "check"].tolist()
        rows.append({"model": name, "healthy": not failed, "failed": ", ".join(failed)})
    return pd.DataFrame(rows)


def verdict(healthy: bool | list[bool], seeds: int | None = None) -> str:
    """'conclusive' when every model a result rests on is healthy (and, when ``seeds`` is given, the
    result holds over more than one seed), else 'inconclusive'."""
    flags = [healthy] if isinstance(healthy, bool) else list(healthy)
    enough_seeds = seeds is None or seeds >= 2
    return "conclusive" if flags and all(flags) and enough_seeds else "inconclusive"


def criteria_dict(criteria: HealthCriteria | None = None) -> dict:
    """The thresholds as a plain dict (stored next to the tables in metrics.json)."""
    return asdict(criteria or HealthCriteria())
