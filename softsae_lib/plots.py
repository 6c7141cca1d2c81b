"""Figures shared by the notebooks (matplotlib); saving is atomic."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from softsae_lib.atomic import atomic_path


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return path


def by_group(ax: plt.Axes, groups: np.ndarray, values: np.ndarray, xlabel: str, ylabel: str,
             title: str = "", seed: int = 0) -> plt.Axes:
    """Violins of ``values`` per distinct ``groups`` value, with jittered points on top."""
    groups, values = np.asarray(groups), np.asarray(values, dtype=float)
    levels = np.unique(groups)
    data = [values[groups == g] for g in levels]
    pos = np.arange(len(levels))
    ax.violinplot(data, positions=pos, showmedians=True, widths=0.8)
    rng = np.random.default_rng(seed)
    for i, d in enumerate(data):
        sub = d if len(d) <= 400 else rng.choice(d, 400, replace=False)
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(sub)), sub, s=3, alpha=0.3, color="k")
    ax.set_xticks(pos, [str(g) for g in levels])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return ax


def scatter_with_trend(ax: plt.Axes, x: np.ndarray, y: np.ndarray, xlabel: str, ylabel: str,
                       title: str = "", max_points: int = 3000, seed: int = 0) -> plt.Axes:
    """Scatter (subsampled) plus binned medians of y along x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), min(len(x), max_points), replace=False)
    ax.scatter(x[idx], y[idx], s=4, alpha=0.3)
    edges = np.quantile(x, np.linspace(0, 1, 11))
    centres, medians = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (x >= lo) & (x <= hi)
        if sel.any():
            centres.append(np.median(x[sel]))
            medians.append(np.median(y[sel]))
    ax.plot(centres, medians, "r-o", ms=3, label="binned median")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(loc="best", fontsize=8)
    return ax
