"""Repeat an experiment over seeds and report each seed and a pooled estimate (issue 12: a result that
hinges on one seed is not a result)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from softsae_lib.stats import summarize_association

ROW_KEYS = ("n", "spearman", "spearman_ci_low", "spearman_ci_high", "pearson", "kendall", "share_at_min",
            "share_at_max")


def seed_association(frames: dict[int, pd.DataFrame], kappa: str, target: str, clusters: str | None,
                     n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Spearman of ``kappa`` with ``target`` for each seed's per-sample frame, plus a ``pooled`` row.

    The pooled estimate stacks every seed's samples after replacing ``kappa`` by its within-seed rank
    (so a seed whose budgets sit higher overall does not count as signal) and resamples whole clusters
    (the same cluster in every seed moves together), so its CI reflects both the sampling of clusters
    and the spread between seeds. ``clusters=None`` treats samples as independent (an ordinary bootstrap
    over samples; the same sample in every seed moves together). Seeds where ``kappa`` is constant get a
    row of NaN with a note.

    Args:
        frames: {seed: per-sample DataFrame with columns ``kappa``, ``target`` and ``clusters``}.

    Returns:
        DataFrame with ``seed`` ('pooled' last), ``kappa``, ``target``, the keys of ``ROW_KEYS`` and ``note``.
    """
    rows, stacked = [], []
    for s, frame in frames.items():
        row = {"seed": s, "kappa": kappa, "target": target}
        if frame[kappa].nunique() < 2:
            rows.append({**row, **dict.fromkeys(ROW_KEYS, np.nan), "note": "constant: correlation undefined"})
            continue
        cl = frame[clusters].to_numpy() if clusters else np.arange(len(frame))
        res = summarize_association(frame[kappa].to_numpy(), frame[target].to_numpy(), clusters=cl,
                                    n_boot=n_boot, seed=seed)
        rows.append({**row, **{k: res[k] for k in ROW_KEYS}, "note": ""})
        ranks = rankdata(frame[kappa].to_numpy()) / len(frame)
        stacked.append(pd.DataFrame({"kappa": ranks, "target": frame[target].to_numpy(), "cluster": cl}))
    if len(stacked) >= 2:
        pool = pd.concat(stacked, ignore_index=True)
        res = summarize_association(pool["kappa"].to_numpy(), pool["target"].to_numpy(),
                                    clusters=pool["cluster"].to_numpy(), n_boot=n_boot, seed=seed)
        rows.append({"seed": "pooled", "kappa": kappa, "target": target, **{k: res[k] for k in ROW_KEYS},
                     "note": f"{len(stacked)} seeds, within-seed ranks"})
    return pd.DataFrame(rows)
