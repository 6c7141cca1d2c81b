"""Local intrinsic dimension (LID): exact K-NN graph + per-point estimators.

    from softsae_lib.lid import local_id
    ids = local_id(x, k=20)            # {"mle": (N,), "twonn": (N,), "lpca": (N,)}

or build the graph once and apply estimators yourself::

    dist, idx = knn(x, 20)
    m = mle(dist); t = twonn_local(dist, idx); p = lpca(x, idx); d = twonn_global(dist)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from softsae_lib.lid.estimators import lpca, mle, twonn_global, twonn_local
from softsae_lib.lid.neighbors import Duplicates, deduplicate, knn

__all__ = ["knn", "deduplicate", "mle", "twonn_local", "lpca", "twonn_global", "local_id"]

_ESTIMATORS = ("mle", "twonn", "lpca")


def local_id(
    x: Tensor,
    k: int,
    estimators: Sequence[str] = ("mle", "twonn", "lpca"),
    *,
    duplicates: Duplicates = "error",
    lpca_threshold: float = 0.9,
    block_size: int = 2048,
) -> dict[str, Tensor]:
    """Per-point intrinsic dimension of the rows of ``x`` (N, D) with several estimators, one K-NN graph.

    Args:
        x: (N, D) points.
        k: neighbours K (MLE uses T_1..T_K; local TwoNN and lPCA use the K-neighbourhood).
        estimators: any of "mle" (:func:`mle`, K−1 normalisation), "twonn" (:func:`twonn_local`,
            neighbourhood incl. the point) and "lpca" (:func:`lpca`, ratio rule at ``lpca_threshold``,
            K neighbours without the point).
        duplicates: passed to :func:`knn`.
        lpca_threshold: explained-variance fraction of the lPCA ratio rule.
        block_size: passed to :func:`knn`.
    Returns:
        ``{name: (N,) float64 tensor}`` in the order of ``estimators``.
    """
    unknown = set(estimators) - set(_ESTIMATORS)
    if unknown:
        raise ValueError(f"unknown estimators {sorted(unknown)}; choose from {_ESTIMATORS}")
    dist, idx = knn(x, k, duplicates=duplicates, block_size=block_size)
    out: dict[str, Tensor] = {}
    for name in estimators:
        if name == "mle":
            out[name] = mle(dist)
        elif name == "twonn":
            out[name] = twonn_local(dist, idx)
        else:
            out[name] = lpca(x, idx, lpca_threshold)
    return out
