"""LapSum soft top-k (Struski et al., ICML 2025, arXiv 2503.06242), exact and in pure PyTorch.

For a row x ∈ R^n, a budget k ∈ [0, n] and a scale α > 0 the soft top-k mask is

    p_j = F((x_j − t) / α),   F = standard Laplace CDF,   t such that Σ_j p_j = k,

so p ∈ [0, 1]^n, Σp = k exactly, larger x gives larger p, and as α → 0 the mask tends to
"ones on the top ⌊k⌋, frac(k) on the next, zeros elsewhere" (``docs/method.md`` §2.8).

The work is split along its seams (this module holds the public API, argument checks and the
row blocking of the full-size passes):

* ``soft_topk_window``: the forward pass on a sort-free top-K window (K ≥ 2k + 2 provably holds
  the threshold), one tail sum over the rest, and the blocked passes that write p (and x ⊙ p).
* ``soft_topk_threshold``: the threshold t from the sorted window, in float64 log space.
* ``soft_topk_autograd``: the autograd functions (implicit-differentiation backward) of the mask
  and of the fused gate x ⊙ p.

Edge cases: k = 0 gives all zeros and k = n all ones (t = ±∞, zero gradients); ties are exact.
Unlike the official C++ extension (which returns Σp = 0.69 at k = 0 and n − ½ at k = n) both
ends are exact here. Entries of p below 2^-100 (fp32; 2^-1000 in fp64) are
returned as exact zeros so that no denormal numbers reach downstream matmuls.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from softsae_lib.ops.soft_topk_autograd import SoftTopK, SoftTopKGate
from softsae_lib.ops.soft_topk_window import window_size

__all__ = ["GateOutput", "soft_topk", "soft_topk_gate", "window_size"]


# Rows per block of the full-size passes: ~2^18 elements (1 MiB in fp32) per thread keep a
# block's buffers in the per-core L2 cache, so the 5-7 elementwise passes per block cost one
# trip to DRAM instead of one each (the passes over a 4096 × 16384 batch were bandwidth-bound).
# With several threads every op of a block is a parallel region whose start and end cost tens
# of microseconds (more on a busy machine), so blocks are 4× larger there: measured at 2 threads,
# 2^20 elements per thread beat 2^18 (1.38× vs 1.59× hard top-k) though they spill from L2.
_BLOCK_ELEMS = 1 << 18
_PARALLEL_BLOCK_SCALE = 4


def _row_blocks(B: int, n: int) -> list[slice]:
    """Row slices of ~_BLOCK_ELEMS elements per thread covering range(B); one for small inputs."""
    threads = torch.get_num_threads()
    per_thread = _BLOCK_ELEMS * (_PARALLEL_BLOCK_SCALE if threads > 1 else 1)
    rows = max(1, per_thread * threads // max(n, 1))
    return [slice(i, min(B, i + rows)) for i in range(0, B, rows)]


def _validate(x: torch.Tensor, k: torch.Tensor, alpha: float) -> None:
    n = x.shape[-1]
    if not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"soft_topk: alpha must be a finite number > 0, got {alpha}")
    # One cheap reduction catches NaN and ±inf; only if it fires do we pay for locating the row.
    if not torch.isfinite(x.sum(dim=-1)).all():
        bad = (~torch.isfinite(x)).reshape(-1, n).any(dim=1).nonzero()  # flat row index, any ndim
        if bad.numel():
            raise ValueError(f"soft_topk: x has non-finite values in row {bad[0].item()} "
                             f"({bad.shape[0]} row(s) affected)")
    kf = k.reshape(-1)
    bad = (~torch.isfinite(kf)) | (kf < 0) | (kf > n)
    if bad.any():
        row = int(bad.nonzero()[0].item())
        raise ValueError(f"soft_topk: k[row {row}] = {kf[row].item()} is outside [0, n={n}] "
                         f"({int(bad.sum())} row(s) affected)")


def _prepare(x: torch.Tensor, k, alpha) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor | None]:
    """Validate and flatten: returns x2: (B, n) float32/64, k2: (B, 1), α as float, α tensor or None."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError("soft_topk: x must be a tensor with at least one dimension (..., n)")
    if not x.is_floating_point():
        raise ValueError(f"soft_topk: x must be floating point, got {x.dtype}")
    n = x.shape[-1]
    if n == 0:
        raise ValueError(f"soft_topk: x of shape {tuple(x.shape)} has an empty last dimension (n = 0)")
    lead = x.shape[:-1]
    kdt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    if isinstance(k, torch.Tensor):
        k_t = k.to(device=x.device, dtype=kdt)
    else:
        k_t = torch.tensor(float(k), device=x.device, dtype=kdt)
    if k_t.dim() > 0 and tuple(k_t.shape) == tuple(lead) and k_t.shape[-1] != 1:
        k_t = k_t.unsqueeze(-1)  # one budget per row given as (...,) rather than (..., 1)
    try:
        k_b = k_t.expand(*lead, 1)
    except RuntimeError as err:
        raise ValueError(f"soft_topk: k of shape {tuple(k_t.shape)} does not broadcast to "
                         f"{tuple(lead) + (1,)} (one budget per row of x {tuple(x.shape)})") from err
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != 1:
            raise ValueError(f"soft_topk: alpha must be a float or a 0-d tensor, got shape "
                             f"{tuple(alpha.shape)}")
        alpha_val = float(alpha.detach().reshape(()))
        alpha_t = alpha.reshape(()) if alpha.requires_grad else None
    else:
        alpha_val, alpha_t = float(alpha), None
    _validate(x, k_b, alpha_val)
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    x2 = work.reshape(-1, n)
    return x2, k_b.reshape(-1, 1).to(x2.dtype), alpha_val, alpha_t


def _check_window(window: int | None, k2: torch.Tensor, n: int) -> None:
    """A user window must be an int ≥ 1 that holds the threshold (else Σp = k silently breaks)."""
    if window is None:
        return
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"soft_topk: window must be an int ≥ 1 or None, got {window!r}")
    need = window_size(float(k2.detach().max()), n) if k2.numel() else 1
    if window < need:
        raise ValueError(f"soft_topk: window={window} is too small for max k = {float(k2.max()):g} "
                         f"(n = {n}); it must be ≥ {need} = min(n, 2·⌈k⌉ + 2), or None")


def soft_topk(x: torch.Tensor, k: torch.Tensor | float, alpha: torch.Tensor | float,
              window: int | None = None) -> torch.Tensor:
    """LapSum soft top-k mask along the last dimension.

    Args:
        x: (..., n) scores, float16/bfloat16/float32/float64 (halves are computed in float32).
        k: budget per row, fractional, in [0, n]: a number or a tensor broadcastable to (..., 1).
        alpha: Laplace scale α > 0, a float or a 0-d tensor (differentiable if it requires grad).
        window: top-K window size; by default the smallest provably exact one, 2·⌈max k⌉ + 2.

    Returns:
        p: (..., n) in x's dtype with p ∈ [0, 1] and Σ_j p_j = k per row (to rounding).

    Raises:
        ValueError: naming the argument or row when k ∉ [0, n], α ≤ 0, x is not finite or has
        n = 0, k's shape does not broadcast to (..., 1), or ``window`` is not an int ≥ the exact size.
    """
    x2, k2, alpha_val, alpha_t = _prepare(x, k, alpha)
    _check_window(window, k2, x.shape[-1])
    if x2.numel() == 0:
        return torch.zeros_like(x)
    p = SoftTopK.apply(x2, k2, alpha_t, alpha_val, window, _row_blocks(*x2.shape))
    return p.reshape(x.shape).to(x.dtype)


class GateOutput(NamedTuple):
    """What :func:`soft_topk_gate` returns; only ``z`` is differentiable."""

    z: torch.Tensor
    """(..., n) x ⊙ p in x's dtype."""
    t: torch.Tensor
    """(...,) thresholds: p_j > ½ exactly where x_j > t."""
    kth: torch.Tensor
    """(...,) the ⌊k⌋-th largest entry of each row (x_j ≥ kth selects the hard top-⌊k⌋, up to
    ties; +∞ when ⌊k⌋ = 0)."""
    top: torch.Tensor
    """(..., K) long: positions of each row's K largest entries in descending order of x, with
    K the window the forward pass used: ``window`` when given, else ⌈k_max⌉ + 9 or, when the
    threshold falls outside that, ``window_size(k_max, n)`` (K > ⌊k_max⌋ unless K = n); its first
    ⌊k⌋ columns are the hard top-⌊k⌋."""


def soft_topk_gate(x: torch.Tensor, k: torch.Tensor | float, alpha: float,
                   window: int | None = None) -> GateOutput:
    """x ⊙ soft_topk(x, k, α) with one fused backward (SoftSAE's training code), and the selection.

    Same values and gradients (for x and k) as ``x * soft_topk(x, k, alpha)``, but the backward
    pass allocates one full-size buffer instead of four. α is not differentiable here. The
    threshold and the hard top-⌊k⌋ come for free from the forward pass (see :class:`GateOutput`).
    """
    x2, k2, alpha_val, _ = _prepare(x, k, alpha)
    _check_window(window, k2, x.shape[-1])
    lead = x.shape[:-1]
    if x2.numel() == 0:
        empty = x.new_zeros(lead)
        return GateOutput(torch.zeros_like(x), empty, empty, torch.zeros((*lead, 0), dtype=torch.long,
                                                                          device=x.device))
    z, t, kth, top = SoftTopKGate.apply(x2, k2, alpha_val, window, _row_blocks(*x2.shape))
    return GateOutput(z.reshape(x.shape).to(x.dtype), t.reshape(lead).to(x.dtype),
                      kth.reshape(lead).to(x.dtype), top.reshape(*lead, top.shape[-1]))
