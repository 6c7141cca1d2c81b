"""Reconstruction and sparsity metrics for sparse autoencoders (``docs/sae-variants.md`` §10).

All reconstruction metrics are computed in the ORIGINAL activation space. Notation: ``x`` is
``(N, d)`` inputs, ``x_hat`` is ``(N, d)`` reconstructions, ``codes`` is ``(N, F)`` latent
activations, ``e = x - x_hat`` and ``x̄`` is the GLOBAL mean of ``x`` over all ``N`` samples.

Everything is built on additive sufficient statistics so that the one-shot functions and the
streamed (batch-by-batch) evaluation share one set of formulas::

    stats = None
    for x, x_hat in batches:
        stats = merge_stats(stats, reconstruction_stats(x, x_hat))
    metrics = reconstruction_metrics_from_stats(stats)

Sums are accumulated in float64: FVU's denominator ``Σ‖x‖² − ‖Σx‖²/N`` subtracts two large
numbers, which loses too many digits in float32 for activations with a large mean component.
"""

from __future__ import annotations

import numpy as np
import torch

# Additive sums behind the reconstruction metrics (not to be confused with the ``stats`` module).
ReconstructionSums = dict[str, torch.Tensor | float]

_EPS = 1e-12
DENSITY_THRESHOLDS = (0.1, 0.01)
PERCENTILES = (5, 25, 50, 75, 95)
# Relative tolerance below which Σ‖x − x̄‖² is treated as zero: the float64 cancellation error of
# Σ‖x‖² − ‖Σx‖²/N is far below this, so anything smaller is not a real variance.
_ZERO_VAR_RTOL = 1e-12


def _check_2d(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, ·), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (N = 0): metrics are undefined")


# ----------------------------------------------------------------------------- reconstruction


def reconstruction_stats(x: torch.Tensor, x_hat: torch.Tensor) -> ReconstructionSums:
    """Additive sufficient statistics of one batch; combine batches with :func:`merge_stats`.

    Args:
        x: ``(N, d)`` inputs, any float dtype / device.
        x_hat: ``(N, d)`` reconstructions, same shape as ``x``.

    Returns:
        Dict with ``sum_x`` a ``(d,)`` float64 CPU tensor and Python numbers ``n``, ``n_elements``
        (= N·d), ``sum_x_sq`` (Σ‖x‖²), ``sum_err_sq`` (Σ‖e‖²), ``sum_xhat_sq`` (Σ‖x̂‖²),
        ``sum_dot`` (Σ⟨x, x̂⟩), ``sum_cos``, and ``sum_rse`` / ``sum_norm_ratio`` / ``n_rse``, which
        sum over the rows with ‖x_n‖ > 0 only (the ratios are undefined elsewhere).
    """
    _check_2d(x, "x")
    if not isinstance(x_hat, torch.Tensor) or x_hat.shape != x.shape:
        shape = tuple(x_hat.shape) if isinstance(x_hat, torch.Tensor) else type(x_hat).__name__
        raise ValueError(f"x_hat must have the same shape as x {tuple(x.shape)}, got {shape}")
    xd = x.detach().to(torch.float64)
    xh = x_hat.detach().to(device=xd.device, dtype=torch.float64)
    x_sq = (xd * xd).sum(1)
    xh_sq = (xh * xh).sum(1)
    dot = (xd * xh).sum(1)
    err_sq = ((xd - xh) ** 2).sum(1)
    x_norm, xh_norm = x_sq.sqrt(), xh_sq.sqrt()
    cos = dot / (x_norm * xh_norm).clamp_min(_EPS)
    nz = x_norm > 0
    return {
        "n": int(x.shape[0]),
        "n_elements": int(x.numel()),
        "sum_x": xd.sum(0).cpu(),
        "sum_x_sq": x_sq.sum().item(),
        "sum_err_sq": err_sq.sum().item(),
        "sum_xhat_sq": xh_sq.sum().item(),
        "sum_dot": dot.sum().item(),
        "sum_cos": cos.sum().item(),
        "sum_rse": (err_sq[nz] / x_sq[nz]).sum().item(),
        "sum_norm_ratio": (xh_norm[nz] / x_norm[nz]).sum().item(),
        "n_rse": int(nz.sum().item()),
    }


def merge_stats(a: ReconstructionSums | None, b: ReconstructionSums | None) -> ReconstructionSums:
    """Sum two :func:`reconstruction_stats` dicts; ``None`` or ``{}`` act as the identity."""
    if not a:
        return dict(b) if b else {}
    if not b:
        return dict(a)
    if a.keys() != b.keys():
        raise ValueError(f"merge_stats: key mismatch between a {sorted(a)} and b {sorted(b)}")
    if a["sum_x"].shape != b["sum_x"].shape:
        raise ValueError(
            f"merge_stats: feature dimension mismatch, a has d={tuple(a['sum_x'].shape)}, "
            f"b has d={tuple(b['sum_x'].shape)}"
        )
    return {k: a[k] + b[k] for k in a}


def reconstruction_metrics_from_stats(stats: ReconstructionSums) -> dict[str, float]:
    """Metrics from (merged) sufficient statistics.

    Returns a dict with:
        ``fvu``: Σ‖e‖² / Σ‖x − x̄‖² with the global mean x̄ — Gao et al.'s "normalised MSE".
        ``explained_variance``: 1 − fvu.
        ``mse``: per-ELEMENT mean of e² over all N·d entries (not per-sample ‖e‖²).
        ``rse``: mean_n ‖e_n‖²/‖x_n‖² over rows with ‖x_n‖ > 0 (nan if there are none).
        ``cosine``: mean_n cos(x_n, x̂_n); a zero row counts as cosine 0.
        ``norm_ratio``: mean_n ‖x̂_n‖/‖x_n‖ over rows with ‖x_n‖ > 0 (nan if there are none).
        ``relative_reconstruction_bias``: γ = E‖x̂‖² / E⟨x, x̂⟩ (Gated SAE, arXiv 2404.16014
            Eq. 10); γ < 1 means shrinkage; nan if Σ⟨x, x̂⟩ = 0.
        ``n_samples``: N.

    Raises:
        ValueError: if ``stats`` holds no samples, or the total variance Σ‖x − x̄‖² is zero
            (constant inputs), where FVU is undefined.
    """
    if not stats or stats["n"] == 0:
        raise ValueError("stats holds no samples (N = 0): metrics are undefined")
    n = float(stats["n"])
    sum_x = stats["sum_x"]
    total_var = stats["sum_x_sq"] - float((sum_x * sum_x).sum()) / n
    if total_var <= _ZERO_VAR_RTOL * stats["sum_x_sq"]:
        raise ValueError(
            "x has zero total variance Σ‖x − x̄‖² (all rows identical): FVU / explained variance are undefined"
        )
    fvu_value = stats["sum_err_sq"] / total_var
    n_rse = stats["n_rse"]
    nan = float("nan")
    return {
        "fvu": fvu_value,
        "explained_variance": 1.0 - fvu_value,
        "mse": stats["sum_err_sq"] / stats["n_elements"],
        "rse": stats["sum_rse"] / n_rse if n_rse else nan,
        "cosine": stats["sum_cos"] / n,
        "norm_ratio": stats["sum_norm_ratio"] / n_rse if n_rse else nan,
        "relative_reconstruction_bias": stats["sum_xhat_sq"] / stats["sum_dot"] if stats["sum_dot"] else nan,
        "n_samples": n,
    }


def reconstruction_metrics(x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, float]:
    """One-shot metrics for ``(N, d)`` ``x`` and ``x_hat``; see :func:`reconstruction_metrics_from_stats`."""
    return reconstruction_metrics_from_stats(reconstruction_stats(x, x_hat))


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained (global mean) for ``(N, d)`` inputs."""
    return reconstruction_metrics(x, x_hat)["fvu"]


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """1 − FVU for ``(N, d)`` inputs."""
    return reconstruction_metrics(x, x_hat)["explained_variance"]


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Per-element mean squared error over all N·d entries of ``(N, d)`` inputs."""
    return reconstruction_metrics(x, x_hat)["mse"]


def cosine_similarity(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean row-wise cosine similarity of ``(N, d)`` inputs."""
    return reconstruction_metrics(x, x_hat)["cosine"]


def norm_ratio(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean ‖x̂_n‖/‖x_n‖ over rows of ``(N, d)`` inputs with ‖x_n‖ > 0."""
    return reconstruction_metrics(x, x_hat)["norm_ratio"]


def relative_reconstruction_bias(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """γ = E‖x̂‖² / E⟨x, x̂⟩ (Gated SAE Eq. 10) for ``(N, d)`` inputs."""
    return reconstruction_metrics(x, x_hat)["relative_reconstruction_bias"]


# ----------------------------------------------------------------------------------- sparsity


def l0_per_sample(codes: torch.Tensor) -> torch.Tensor:
    """Number of nonzero latents per sample: ``(N, F)`` codes -> ``(N,)`` long tensor."""
    _check_2d(codes, "codes")
    return (codes != 0).sum(1)


def l0_summary(l0: torch.Tensor) -> dict[str, float]:
    """Summary of per-sample L0 ``(N,)``: mean, std (population, ddof=0), min, max, p5..p95.

    Percentiles use linear interpolation (numpy's default); numpy is used rather than
    ``torch.quantile``, which refuses inputs above 2**24 elements.
    """
    if not isinstance(l0, torch.Tensor) or l0.ndim != 1:
        raise ValueError(f"l0 must be a 1-D tensor, got {getattr(l0, 'shape', type(l0).__name__)}")
    if l0.numel() == 0:
        raise ValueError("l0 is empty (N = 0): summary is undefined")
    a = l0.detach().cpu().to(torch.float64).numpy()
    out = {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max())}
    for p, v in zip(PERCENTILES, np.percentile(a, PERCENTILES), strict=True):
        out[f"p{p}"] = float(v)
    return out


def feature_counts(codes: torch.Tensor) -> torch.Tensor:
    """Samples in which each latent is nonzero: ``(N, F)`` -> ``(F,)`` long; sum over batches."""
    _check_2d(codes, "codes")
    return (codes != 0).sum(0)


def density_from_counts(counts: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Feature density ρ_i = counts_i / N as an ``(F,)`` float64 tensor."""
    if not isinstance(counts, torch.Tensor) or counts.ndim != 1:
        raise ValueError(f"counts must be a 1-D (F,) tensor, got {getattr(counts, 'shape', type(counts))}")
    if n_samples <= 0:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    if counts.numel() and (counts.min() < 0 or counts.max() > n_samples):
        raise ValueError(
            f"counts must lie in [0, n_samples={n_samples}]: N mismatch between counts and n_samples"
        )
    return counts.detach().to(torch.float64) / n_samples


def feature_density(codes: torch.Tensor) -> torch.Tensor:
    """Feature density ρ of ``(N, F)`` codes as an ``(F,)`` float64 tensor."""
    return density_from_counts(feature_counts(codes), codes.shape[0])


def sparsity_metrics_from_counts(counts: torch.Tensor, n_samples: int) -> dict[str, float]:
    """Dead / dense statistics from ``(F,)`` nonzero counts accumulated over ``n_samples`` rows.

    Returns ``dead_fraction`` (#{ρ_i = 0}/F), ``alive_fraction`` (1 − dead), and for τ in
    {0.1, 0.01}: ``dense_fraction_τ`` (#{ρ_i > τ}/F) and ``dense_mass_τ``
    (Σ_{ρ_i>τ} ρ_i / Σ_i ρ_i, i.e. the share of all firings made by dense latents; 0 if Σρ = 0).
    """
    rho = density_from_counts(counts, n_samples)
    if rho.numel() == 0:
        raise ValueError("counts is empty (F = 0): sparsity metrics are undefined")
    total = float(rho.sum())
    dead = float((rho == 0).to(torch.float64).mean())
    out = {"dead_fraction": dead, "alive_fraction": 1.0 - dead}
    for tau in DENSITY_THRESHOLDS:
        dense = rho > tau
        out[f"dense_fraction_{tau}"] = float(dense.to(torch.float64).mean())
        out[f"dense_mass_{tau}"] = float(rho[dense].sum()) / total if total > 0 else 0.0
    return out


def sparsity_metrics(codes: torch.Tensor) -> dict[str, float]:
    """One-shot :func:`sparsity_metrics_from_counts` for ``(N, F)`` codes."""
    return sparsity_metrics_from_counts(feature_counts(codes), codes.shape[0])
