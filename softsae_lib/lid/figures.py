"""The figure of the LID-estimator study (:mod:`softsae_lib.lid.sensitivity`)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd


def sensitivity_figure(summary: pd.DataFrame, association: pd.DataFrame | None = None,
                       title: str = "") -> plt.Figure:
    """One panel per estimator: median LID (quartile band) against K, a line per sample size N; and,
    when ``association`` (:func:`~softsae_lib.lid.sensitivity.lid_association` rows) is given, a last
    panel with its Spearman against K at the largest N, a line per estimator and target.

    Args:
        summary: :func:`~softsae_lib.lid.sensitivity.sensitivity_summary` output.
        association: optional association rows (columns estimator, n, k, target, spearman).
        title: figure title.
    """
    estimators = list(dict.fromkeys(summary["estimator"]))
    panels = len(estimators) + (association is not None)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6), layout="constrained", squeeze=False)
    for ax, est in zip(axes[0], estimators, strict=False):
        for n, part in summary[summary["estimator"] == est].groupby("n"):
            line, = ax.plot(part["k"], part["median"], marker="o", lw=1.2, label=f"N = {n}")
            ax.fill_between(part["k"], part["q25"], part["q75"], alpha=0.15, color=line.get_color())
        ax.set(xscale="log", xlabel="neighbours K", ylabel="LID (median, quartiles)", title=est)
        ax.legend(fontsize=7)
    if association is not None:
        ax = axes[0][-1]
        top = association[association["n"] == association["n"].max()]
        for (est, target), part in top.groupby(["estimator", "target"], sort=False):
            ax.plot(part["k"], part["spearman"], marker="o", lw=1, label=f"{est}, {target}")
        ax.axhline(0, color="k", lw=0.6)
        ax.set(xscale="log", xlabel="neighbours K", ylabel="Spearman", ylim=(-1, 1),
               title=f"ρ with LID (N = {int(top['n'].max())})")
        ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
