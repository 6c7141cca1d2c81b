"""The LapSum threshold from a sorted top-K window (``docs/method.md`` §2.2 and §2.7).

Given a row's K largest values s (descending), the tail sum T of the rest relative to s_{K−1}, a
budget k and a scale α, :func:`solve_threshold` finds t with Σ_j F((x_j − t)/α) = k. The one-sided
sums A_p, B_p of the window follow the recursions of §2.2, A_p = e_{p+1}(1 + A_{p+1}) and
B_p = e_p(1 + B_{p−1}) with e_p = e^{(s_p − s_{p−1})/α} ≤ 1, evaluated in float64 by a doubling
scan: every factor and partial sum lies in [0, K + T], so nothing overflows for any α, ties
(e = 1) are counted exactly however large the values are relative to α, and a gap of more than
~707α (e = 0) correctly cuts the sums. The root of the piecewise-exponential equation uses the
cancellation-free closed form with R evaluated in log space, which also covers an exactly integer
k whose q = ab·e^{−δ} underflows.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["Threshold", "exp_no_subnormal", "solve_threshold"]


def exp_no_subnormal(u: torch.Tensor) -> torch.Tensor:
    """e^u elementwise, with results within a factor e of the dtype's smallest normal number or
    below (e^u ≤ 6e-308 in float64) returned as 0.

    The window's exponents mostly lie far below ln(tiny) ≈ −708 (float64) at small α, and libm's
    path for results near or below the subnormal range costs ~20× a normal exp (0.5 ms vs 0.03 ms
    on a 512 × 104 window). Every caller adds the result to a number ≥ ½, multiplies a sum of
    terms ≤ 1 by it, or uses it as a p or q that is flushed to 0 anyway.
    """
    low = math.log(torch.finfo(u.dtype).tiny) + 1.0
    return torch.nn.functional.threshold_(torch.exp(u.clamp(min=low)), math.exp(low), 0.0)


def _recurrence(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """y_m = e_m·(1 + y_{m−1}) for m = 0..M−1 from y_{−1} = 0, along dim 0 of e: (M, R) in [0, 1],
    by a doubling (Hillis–Steele) scan of the affine maps y ↦ e_m·y + e_m in ⌈log₂ M⌉ steps.

    Returns (y, P), (M, R) each, with P_m = Π_{j≤m} e_j: started from y_{−1} = T instead of 0
    the recursion gives y + P·T. Every product stays in [0, 1] and y_m ≤ m + 1. Values below the
    square root of the dtype's smallest normal number (2^-510 in float64) are set to 0 after each
    step, so no product is ever subnormal (an underflowing multiply costs ~100× a normal one on
    x86); such terms are far below the rounding of every sum they enter (each is added to a
    number ≥ ½, or to a gap δ ≥ the values' resolution / α). The scan runs along dim 0 so that
    every shifted slice is one contiguous block.
    """
    floor = 2.0 * math.sqrt(torch.finfo(e.dtype).tiny)
    a = torch.nn.functional.threshold(e, floor, 0.0)
    b = a.clone()
    step = 1
    while step < a.shape[0]:
        # Compose each map with the one `step` places earlier (right-hand sides use old values).
        b[step:] = torch.nn.functional.threshold_(torch.addcmul(b[step:], a[step:], b[:-step]), floor, 0.0)
        a[step:] = torch.nn.functional.threshold_(a[step:] * a[:-step], floor, 0.0)
        step *= 2
    return b, a


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
                    tail_hi: float | torch.Tensor | None = None) -> Threshold:
    """Threshold t per row from the sorted window (see :class:`Threshold`).

    s: (B, K) descending window values (float64); tail: (B,) T relative to s_{K−1};
    k: (B,) budgets in (0, n). T enters ref and off only through ln(1 + A) at two knots (the
    bracket's lower end and the first) and the bracket itself; with ``tail_hi`` those are also
    computed for T = tail_hi (a number, or (B,) per row), and a row whose values agree at both
    ends is ``stable``: every intermediate T gives the same result (each is a monotone function
    of T, A = A(0) + T·∂A/∂T), so T need not be known exactly.
    """
    B, K = s.shape
    # Knot-major layout (K, B): the scans shift along dim 0. e[j] = e^{(s_{j+1} − s_j)/α} ∈ [0, 1],
    # j = 0..K−2, exactly 1 across a tie.
    st = s.t().contiguous()
    e = exp_no_subnormal((st[1:] - st[:-1]) / alpha)
    # B_p = e_{p−1}(1 + B_{p−1}) from B_0 = 0; A_p = e_p(1 + A_{p+1}) from A_{K−1} = T, which is
    # the same recursion on the reversed factors: both run as one scan over 2B columns.
    y, prod = _recurrence(torch.cat([e, e.flip(0)], dim=1))
    zero = s.new_zeros(1, B)
    b_sums = torch.cat([zero, y[:, :B]])
    a_free = torch.cat([y[:, B:].flip(0), zero])  # A at T = 0
    a_gain = torch.cat([prod[:, B:].flip(0), zero + 1])  # ∂A/∂T = e^{(s_{K−1} − s_p)/α}
    a_sums = torch.addcmul(a_free, a_gain, tail)
    idx = torch.arange(K, device=s.device, dtype=s.dtype).unsqueeze(1)
    # Soft count at each knot: Φ(s_p) = p + ½ + ½(A_p − B_p); non-decreasing, flat across ties.
    phi = idx + 0.5 + 0.5 * (a_sums - b_sums)
    cnt = torch.count_nonzero(phi <= k, dim=0)
    # Rounding may split a tie block; the bracket must start at the end of the block.
    l_raw = (cnt - 1).clamp(min=0)
    l = torch.count_nonzero(s >= s.gather(1, l_raw.unsqueeze(1)), dim=1) - 1
    upper = cnt == 0  # t above the largest value
    lower = (~upper) & (l >= n - 1)  # t below the smallest value (only when K == n)
    l = torch.where(upper | lower, torch.zeros_like(l), l)
    l1 = (l + 1).clamp(max=K - 1)
    # Per-row picks by gather (advanced indexing costs several times more per call at small sizes).
    s_l, s_l1 = s.gather(1, torch.stack([l, l1], dim=1)).unbind(1)

    ln1a = torch.log1p(a_sums.gather(0, l1.unsqueeze(0)).squeeze(0))  # ln(1 + A_{l+1})
    ln1b = torch.log1p(b_sums.gather(0, l.unsqueeze(0)).squeeze(0))  # ln(1 + B_l)
    d = k - (l + 1).to(k.dtype)
    delta = (s_l - s_l1) / alpha
    ln_q = ln1a + ln1b - delta
    # ln R with R = |d| + sqrt(d² + q), never forming q or 1/q explicitly.
    ln_d = torch.log(d.abs())
    w = 0.5 * ln_q - ln_d
    ln_r = torch.where(w >= 0, 0.5 * ln_q + torch.asinh(torch.exp(-w.clamp(min=0))),
                       ln_d + torch.log1p(torch.sqrt(1 + torch.exp(2 * w.clamp(max=0)))))
    ref = torch.where(d >= 0, s_l1, s_l)
    off = torch.where(d >= 0, ln1a - ln_r, ln_r - ln1b)
    ln1a_first = torch.log1p(a_sums[0])
    off_upper = ln1a_first - torch.log(2 * k)
    off_lower = torch.log(2 * (n - k)) - torch.log1p(b_sums[-1])
    ref = torch.where(upper, s[:, 0], torch.where(lower, s[:, -1], ref))
    stable = None
    if tail_hi is not None:  # T enters through the bracket and ln(1 + A) at l + 1 and at 0
        a_hi = (torch.addcmul(a_free, a_gain, tail_hi) if isinstance(tail_hi, torch.Tensor)
                else torch.add(a_free, a_gain, alpha=tail_hi))
        phi_hi = idx + 0.5 + 0.5 * (a_hi - b_sums)
        stable = torch.count_nonzero(phi_hi <= k, dim=0) == cnt
        stable &= (torch.log1p(a_hi.gather(0, l1.unsqueeze(0)).squeeze(0)) == ln1a) & \
            (torch.log1p(a_hi[0]) == ln1a_first)
    off = torch.where(upper, off_upper, torch.where(lower, off_lower, off))
    return Threshold(ref, off, phi[-1], stable)

