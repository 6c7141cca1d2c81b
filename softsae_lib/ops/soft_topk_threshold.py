"""The LapSum threshold from a sorted top-K window (``docs/method.md`` §2.2 and §2.7).

Given a row's K largest values s (descending), the tail sum T of the rest relative to s_{K−1}, a
budget k and a scale α, :func:`solve_threshold` finds t with Σ_j F((x_j − t)/α) = k. The one-sided
sums A_p, B_p of the window are computed in log space with ``logcumsumexp`` in float64, so nothing
overflows for any α; the root of the piecewise-exponential equation uses the cancellation-free
closed form with R evaluated in log space, which also covers an exactly integer k whose
q = ab·e^{−δ} underflows.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["Threshold", "solve_threshold"]

# Rows whose (max − min)/α exceeds this get exact pairwise log sums (error of the pivot-centred
# ones grows like span/α · 2^-53).
_EXACT_SPAN = 1e8


def _log1p_exp(v: torch.Tensor) -> torch.Tensor:
    """ln(1 + e^v), exact at v = −∞."""
    return torch.logaddexp(torch.zeros_like(v), v)


def _exact_log_sums(s: torch.Tensor, tail: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(ln A_p, ln B_p) of every window knot from pairwise differences, (R, K) each.

    O(K²) per row, used only for rows whose span/α exceeds ``_EXACT_SPAN`` (α far below the
    values' resolution): every term is formed relative to its own knot, so a tie counts exactly 1.
    """
    K = s.shape[1]
    d = (s.unsqueeze(1) - s.unsqueeze(2)) / alpha  # d[r, p, i] = (s_i − s_p)/α
    after = torch.ones(K, K, dtype=torch.bool, device=s.device).triu(1)  # i > p
    ninf = -math.inf
    ln_a = torch.logsumexp(d.masked_fill(~after, ninf), dim=2)
    ln_a = torch.logaddexp(ln_a, (s[:, -1:] - s) / alpha + torch.log(tail).unsqueeze(1))
    ln_b = torch.logsumexp((-d).masked_fill(~after.T, ninf), dim=2)
    return ln_a, ln_b


class Threshold(NamedTuple):
    """What :func:`solve_threshold` returns, (B,) each: t = ref + α·off, with ref a window value, so
    that (x − t)/α = (x − ref)/α − off stays exact when α is below ref's resolution (ref + α·off
    would round to ref and put p = ½ on a whole tie block)."""

    ref: torch.Tensor
    off: torch.Tensor
    phi_last: torch.Tensor
    """Φ(s_{K−1}), the soft count at the window's last knot: the window holds t when it is > k."""
    stable: torch.Tensor | None
    """With ``tail_hi``: True where any tail sum in [tail, tail_hi] gives the same ref and off."""


def solve_threshold(s: torch.Tensor, tail: torch.Tensor, k: torch.Tensor, alpha: float, n: int,
                    tail_hi: float | None = None) -> Threshold:
    """Threshold t per row from the sorted window (see :class:`Threshold`).

    s: (B, K) descending window values (float64); tail: (B,) T relative to s_{K−1};
    k: (B,) budgets in (0, n). T enters ref and off only through ln A at two knots (the bracket's
    lower end and the first) and the bracket itself; with ``tail_hi`` those are also computed for
    T = tail_hi, and a row whose values agree at both ends is ``stable``: every intermediate T
    gives the same result (each is a monotone function of T), so T need not be known exactly.
    """
    B, K = s.shape
    rows = torch.arange(B, device=s.device)
    # Centre on the element near rank k so that the log sums are most accurate where t lies.
    pivot = (k.round() - 1).clamp(0, K - 1).long()
    z = (s - s[rows, pivot].unsqueeze(1)) / alpha  # (B, K), non-increasing
    ninf = torch.full((B, 1), -math.inf, dtype=s.dtype, device=s.device)
    # ln B_p = z_p + ln Σ_{i<p} e^{−z_i};  ln A_p = −z_p + ln(Σ_{p<i<K} e^{z_i} + e^{z_{K−1}} T).
    prefix = torch.cat([ninf, torch.logcumsumexp(-z, dim=1)[:, :-1]], dim=1)
    suffix = torch.cat([torch.logcumsumexp(z.flip(1), dim=1).flip(1)[:, 1:], ninf], dim=1)
    ln_tail = z[:, -1] + torch.log(tail)
    ln_b = z + prefix
    ln_a = -z + torch.logaddexp(suffix, ln_tail.unsqueeze(1))
    idx = torch.arange(K, device=s.device, dtype=s.dtype)
    if tail_hi is not None:
        ln_a_hi = -z + torch.logaddexp(suffix, (z[:, -1] + math.log(tail_hi)).unsqueeze(1))
        phi_hi = idx + 0.5 + 0.5 * (torch.exp(ln_a_hi) - torch.exp(ln_b))
    far = (s[:, 0] - s[:, -1]) / alpha > _EXACT_SPAN
    if bool(far.any()):  # |z| so large that the pivot-centred sums lose tie multiplicities
        ln_a[far], ln_b[far] = _exact_log_sums(s[far], tail[far], alpha)
    # Soft count at each knot: Φ(s_p) = p + ½ + ½(A_p − B_p); non-decreasing, flat across ties.
    phi = idx + 0.5 + 0.5 * (torch.exp(ln_a) - torch.exp(ln_b))
    cnt = (phi <= k.unsqueeze(1)).sum(dim=1)
    # Rounding may split a tie block; the bracket must start at the end of the block.
    l_raw = (cnt - 1).clamp(min=0)
    l = (s >= s[rows, l_raw].unsqueeze(1)).sum(dim=1) - 1
    upper = cnt == 0  # t above the largest value
    lower = (~upper) & (l >= n - 1)  # t below the smallest value (only when K == n)
    l = torch.where(upper | lower, torch.zeros_like(l), l)
    l1 = (l + 1).clamp(max=K - 1)

    ln1a = _log1p_exp(ln_a[rows, l1])  # ln(1 + A_{l+1})
    ln1b = _log1p_exp(ln_b[rows, l])  # ln(1 + B_l)
    d = k - (l + 1).to(k.dtype)
    delta = (s[rows, l] - s[rows, l1]) / alpha  # not z[l] − z[l1]: exact however large |z| is
    ln_q = ln1a + ln1b - delta
    # ln R with R = |d| + sqrt(d² + q), never forming q or 1/q explicitly.
    ln_d = torch.log(d.abs())
    w = 0.5 * ln_q - ln_d
    ln_r = torch.where(w >= 0, 0.5 * ln_q + torch.asinh(torch.exp(-w.clamp(min=0))),
                       ln_d + torch.log1p(torch.sqrt(1 + torch.exp(2 * w.clamp(max=0)))))
    ref = torch.where(d >= 0, s[rows, l1], s[rows, l])
    off = torch.where(d >= 0, ln1a - ln_r, ln_r - ln1b)
    off_upper = _log1p_exp(ln_a[:, 0]) - torch.log(2 * k)
    off_lower = torch.log(2 * (n - k)) - _log1p_exp(ln_b[:, -1])
    ref = torch.where(upper, s[:, 0], torch.where(lower, s[:, -1], ref))
    stable = None
    if tail_hi is not None:  # rows on the exact pairwise sums (far) are not checked: never stable
        stable = ((phi_hi <= k.unsqueeze(1)).sum(dim=1) == cnt) & ~far
        stable &= (ln_a_hi[rows, l1] == ln_a[rows, l1]) & (ln_a_hi[:, 0] == ln_a[:, 0])
    off = torch.where(upper, off_upper, torch.where(lower, off_lower, off))
    return Threshold(ref, off, phi[:, -1], stable)

