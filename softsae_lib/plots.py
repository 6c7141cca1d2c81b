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


# How figures name the architectures (the code names are registry keys, not what a reader knows).
MODEL_NAMES: dict[str, str] = {
    "soft": "SoftSAE", "topk": "TopK", "batch_topk": "BatchTopK", "matryoshka": "Matryoshka BatchTopK",
    "feature_choice": "Feature Choice", "mutual_choice": "Mutual Choice", "jumprelu": "JumpReLU",
    "relu": "ReLU (L1)", "sparsemax_attention": "Sparsemax attention", "tree": "Tree SAE",
}


def model_name(arch: str) -> str:
    """Display name of an architecture code name (unknown names are returned unchanged)."""
    return MODEL_NAMES.get(arch, arch)


def frontier_lines(ax: plt.Axes, frame, x: str, y: str, title: str = "", annotate: str | None = None,
                   annotate_as: str = "k", log_y: bool = False, legend: bool = True) -> plt.Axes:
    """One line per model through its budgets (a marker alone where it has one), optionally each point
    labelled ``<annotate_as>=<value of column annotate>`` (e.g. its target k); readable decimal ticks
    on a log y axis.

    ``frame``: a DataFrame with a ``model`` column (code names) and the columns ``x``, ``y``.
    """
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    for arch, rows in frame.groupby("model", sort=False):
        rows = rows.sort_values(x)
        line, = ax.plot(rows[x], rows[y], "o-" if len(rows) > 1 else "o", ms=4, label=model_name(arch))
        if annotate is not None:
            for r in rows.itertuples():
                ax.annotate(f"{annotate_as}={getattr(r, annotate)}", (getattr(r, x), getattr(r, y)),
                            textcoords="offset points", xytext=(4, 4), fontsize=6, color=line.get_color())
    if log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title(wrap_title(title, ax), fontsize=9)
    if legend:
        ax.legend(fontsize=7)
    return ax


def wrap_title(title: str, ax: plt.Axes, chars_per_inch: float = 14.0) -> str:
    """``title`` wrapped to the width of ``ax`` (so long model names do not run past the panel)."""
    import textwrap

    width = ax.get_position().width * ax.figure.get_figwidth()
    return "\n".join(textwrap.wrap(title, max(20, int(width * chars_per_inch)))) if title else title


def training_curves(histories: dict, title: str = "") -> plt.Figure:
    """Three panels per run against step: batch FVU (log; dashed: the held-out FVU where the history
    logs it), dead fraction, and k̂ mean ± std where the model reports k̂ (the training-health figure
    of every notebook).

    ``histories``: {label: trainer history DataFrame}; labels may name a model and a seed ("soft s1").
    """
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6), layout="constrained")
    for label, h in histories.items():
        line, = axes[0].plot(h["step"], h["fvu_batch"], lw=1, label=str(label))
        if "fvu_heldout" in h:
            axes[0].plot(h["step"], h["fvu_heldout"], lw=1, ls="--", color=line.get_color())
        axes[1].plot(h["step"], h["dead_fraction"], lw=1, color=line.get_color())
        if "k_hat_mean" in h:
            mean, std = h["k_hat_mean"].to_numpy(float), h["k_hat_std"].to_numpy(float)
            axes[2].plot(h["step"], mean, lw=1, color=line.get_color(), label=str(label))
            axes[2].fill_between(h["step"], mean - std, mean + std, alpha=0.15, color=line.get_color())
            axes[2].plot(h["step"], h["k"], ls=":", lw=1, color=line.get_color())
    axes[0].set(yscale="log", xlabel="step", ylabel="FVU (solid: batch, dashed: held out)",
                title="reconstruction")
    axes[1].set(xlabel="step", ylabel="dead fraction", title="dead latents", ylim=(0, 1))
    axes[2].set(xlabel="step", ylabel="k̂ (mean ± std; dotted: target)", title="SoftSAE budget")
    axes[0].legend(fontsize=6, ncol=2)
    if title:
        fig.suptitle(title)
    return fig
