"""The forward pass of the LapSum soft top-k on a top-K window (``docs/method.md`` §2.7).

Sort-free window: with K ≥ 2k + 2 the soft count at the K-th largest value satisfies
Φ(s_{K−1}) ≥ K/2 > k, so the threshold lies inside the top-K window and only ``topk(x, K)`` plus one
tail sum T = Σ_{j ∉ window} exp((x_j − s_{K−1})/α) are needed (when K would reach n the window is
the whole sorted row). Tail elements always sit below t, so their p is ½·e^{(x_j−t)/α}: it is
computed from the same buffer as T with one multiply, and their derivative q_j = p_j/α needs no
second exponential in the backward pass. Window elements are recomputed in float64.

The full-size work is two passes over x in blocks of rows chosen by the caller (see
``soft_topk._row_blocks``): the tail sum, then p (and the gate's z = x ⊙ p) once t is known. Rows
whose tail provably carries nothing (see ``_tail_free_rows``) skip both passes; only the others
(often a handful of a batch) are gathered and run through them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from softsae_lib.ops.row_topk import row_topk
from softsae_lib.ops.soft_topk_threshold import Threshold, exp_no_subnormal, solve_threshold

__all__ = ["Forward", "lapsum_forward", "window_size"]

# Floor of the tail exponents u = (x − s_{K−1})/α, per dtype: below ln of the smallest normal
# float (libm's slow path for underflowing exp costs ~10x), and low enough that ½e^floor is under
# the flush level below, so every floored entry ends up an exact 0 in p whatever t is.
_EXP_FLOOR = {torch.float32: -70.0, torch.float64: -694.0}
# p below this is returned as 0 (≈ 2^-100 / 2^-1000): far below the rounding error of
# any row sum Σp = k ≥ 1e-20, so Σp = k is unaffected, and no denormals reach later products.
_FLUSH_BELOW = {torch.float32: 2.0**-100, torch.float64: 2.0**-1000}


def window_size(k_max: float, n: int) -> int:
    """Size K of the top-K window that provably contains the threshold for every k ≤ k_max."""
    return min(n, 2 * math.ceil(k_max) + 2)


# Extra columns of the first, narrow window beyond ⌈k_max⌉ + 1 (see lapsum_forward).
_WINDOW_MARGIN = 8


@dataclass
class Forward:
    """What the forward pass leaves for the backward pass (all per row: (B,), or (B, K) window)."""

    p: torch.Tensor | None  # (B, n) the mask, in x's dtype (None for a tail-free gate)
    win_idx: torch.Tensor  # (B, K) positions of the top-K window
    p_win: torch.Tensor  # (B, K) float64 p on the window
    q_win: torch.Tensor  # (B, K) float64 q = f((x − t)/α)/α on the window
    S: torch.Tensor  # (B,) Σ_j q_j
    t: torch.Tensor  # (B,) threshold, ±∞ for k = 0 or n
    kth: torch.Tensor  # (B,) the ⌊k⌋-th largest value (the hard top-⌊k⌋ cut), +∞ when ⌊k⌋ = 0
    z: torch.Tensor | None = None  # (B, n) x ⊙ p, only for the gate
    rows: torch.Tensor | None = None  # (m,) rows whose tail carries weight; None: every row
    p_tail: torch.Tensor | None = None  # (m, n) p on ``rows`` (None when m = 0): what the
    # backward pass needs beyond the window; every other row has p = q = 0 off its window


def sub_blocks(blocks: list[slice], m: int) -> list[slice]:
    """Row slices over range(m) of the same size as ``blocks``' (the caller's choice for B rows)."""
    size = max(1, blocks[0].stop - blocks[0].start) if blocks else max(1, m)
    return [slice(i, min(m, i + size)) for i in range(0, m, size)]


def _tail_exp(x: torch.Tensor, s_last: torch.Tensor, alpha: float, out: torch.Tensor) -> torch.Tensor:
    """out = e^{clamp((x − s_{K−1})/α, floor, 0)}: (R, n) from x: (R, n), s_last: (R, 1).

    The clamped terms (< 4e-31 each in fp32) change T by far less than the dtype's resolution of
    any sum that matters, and they are all flushed to 0 in p (see _EXP_FLOOR).
    """
    if 1.0 / alpha >= torch.finfo(x.dtype).max:  # 1/α overflows x's dtype: 0·∞ = NaN on ties
        u = (x.double() - s_last.double()).div_(alpha)
        out.copy_(u.clamp_(min=_EXP_FLOOR[x.dtype], max=0.0).exp_())
        return out
    b = torch.sub(x, s_last, out=out).mul_(1.0 / alpha)
    return b.clamp_(min=_EXP_FLOOR[x.dtype], max=0.0).exp_()


def lapsum_forward(x: torch.Tensor, k: torch.Tensor, alpha: float, window: int | None,
                   blocks: list[slice], gate: bool = False) -> Forward:
    """x: (B, n) float32/float64, finite; k: (B, 1) in [0, n]; blocks: row slices covering
    range(B) for the full-size passes; gate: also form z = x ⊙ p.

    Without an explicit window a narrow one (⌈k_max⌉ + 1 + _WINDOW_MARGIN columns) is tried
    first: ``topk`` costs grow with K (K = 130 takes ~1.4× K = 64 at n = 16384), and at small α
    the threshold sits a few ranks below k. The result is exact whenever Φ(s_{K−1}) > k in every
    row (t then lies inside the window, all the math below only needs that); otherwise the
    batch is redone with the provably sufficient window 2⌈k_max⌉ + 2. It is also redone with that
    window when the narrow one ends too close below rank k for the rows to skip their tail but
    the wider one probably ends far enough (see ``_wider_spares_tail``): closely spaced values, as
    in a freshly initialised SAE, where one more ``topk`` costs less than the passes over the
    tail (in inputs of at least 2²² entries; smaller ones keep their tail in cache). In large
    batches a sample of rows decides this first (``_probe_prefers_wider``), so the batch does not
    pay for both. Either window is wider than ⌊k_max⌋, so the gate's positions always hold the
    hard top-⌊k⌋.
    """
    B, n = x.shape
    wdt = torch.float64 if x.device.type != "mps" else torch.float32
    kk = k.reshape(B).to(wdt)
    if window is not None:
        return forward_on_window(x, kk, alpha, min(n, window), blocks, gate, wdt, check=False)
    k_max = float(kk.max())
    K_safe = window_size(k_max, n)
    K_narrow = min(n, math.ceil(k_max) + 1 + _WINDOW_MARGIN)
    if K_narrow < K_safe and not _probe_prefers_wider(x, kk, alpha, K_narrow, K_safe, wdt):
        f = forward_on_window(x, kk, alpha, K_narrow, blocks, gate, wdt, check=True, wider=K_safe)
        if f is not None:
            return f
    return forward_on_window(x, kk, alpha, K_safe, blocks, gate, wdt, check=False)


def forward_on_window(x: torch.Tensor, kk: torch.Tensor, alpha: float, K: int, blocks: list[slice],
                      gate: bool, wdt: torch.dtype, check: bool, wider: int | None = None) -> Forward | None:
    """The forward pass on a top-K window; with ``check``, None unless every row's t lies in it
    (and, given a ``wider`` window size, None when that window would spare most rows their tail
    passes and this one does not).

    x: (B, n); kk: (B,) budgets in wdt. Everything but two passes over x lives on the (B, K)
    window: the tail sum T, then p (and z) once t is known, both in blocks of rows (``blocks``).
    Only the rows whose tail may carry weight take these passes (gathered; rows are independent):
    at small α most rows' window ends many α below t, and their tail is provably negligible
    (see _tail_free_rows). Every result equals the all-rows passes' bit for bit.
    """
    B, n = x.shape
    if K < n:
        s, win_idx = row_topk(x, K)
    else:
        s, win_idx = torch.sort(x, dim=1, descending=True)
    s64 = s.to(wdt)
    zero_rows = kk <= 0
    full_rows = kk >= n
    k_safe = _k_safe(kk, n)
    likely = _likely_tail_free(s64, kk, k_safe, alpha, n, x.dtype) if K < n else None
    if likely is None or 2 * int(likely.sum()) < B:
        if (check and wider is not None and likely is not None and x.numel() >= _WIDER_MIN_ELEMS
                and _wider_spares_tail(s64, k_safe, alpha, wider, x.dtype)):
            return None
        return _full_forward(x, s, s64, win_idx, kk, k_safe, alpha, blocks, gate, check)
    # One threshold solve for every row: with the exact T on the rows that need their tail (one
    # pass over those rows only), with T = 0 and the check over every T in [0, n − K] elsewhere.
    rows = (~likely).nonzero().squeeze(1)
    m = rows.numel()
    tail = torch.zeros_like(k_safe)
    if m:
        x_r, idx_r = x.index_select(0, rows), win_idx.index_select(0, rows)
        exps, tail_r = _tail_pass(x_r, s.index_select(0, rows)[:, -1:], idx_r, alpha, sub_blocks(blocks, m))
        tail.index_copy_(0, rows, tail_r.to(wdt))
    th = solve_threshold(s64, tail, k_safe, alpha, n, tail_hi=torch.where(likely, float(n - K), tail))
    w = _on_window(s64, kk, n, th, tail, alpha)
    ok_phi = (th.phi_last > k_safe + 0.5) | zero_rows | full_rows  # t inside the window
    if check and not bool(ok_phi[rows].all()):
        return None
    free = _tail_free_rows(w, th, likely, zero_rows, full_rows, alpha, n, K, x.dtype)
    if check:
        # Φ(s_{K−1}) at T = 0 is a lower bound: accepted here means accepted with the true T; a
        # rejected row is left to the full passes, which know T.
        free &= ok_phi
    late = (likely & ~free).nonzero().squeeze(1)  # looked tail-free, but not provably: rare
    # Tail-free rows: p = z = 0 but for the window (negligible window p flushed as the full path does).
    p_win_x = torch.nn.functional.threshold(w.p_win.to(x.dtype), _FLUSH_BELOW[x.dtype], 0.0)
    out = torch.zeros_like(x).scatter_(1, win_idx, s * p_win_x if gate else p_win_x)
    p_win, q_win, S, t = w.p_win, w.q_win, w.S, w.t
    tail_rows, p_tail = [], []
    if m:
        p_r, z_r = _p_pass(x_r, exps, idx_r, w.gamma.index_select(0, rows), p_win.index_select(0, rows),
                           sub_blocks(blocks, m), gate)
        out.index_copy_(0, rows, z_r if gate else p_r)
        tail_rows.append(rows)
        p_tail.append(p_r)
    if late.numel():
        sub = _full_forward(x.index_select(0, late), s.index_select(0, late), s64.index_select(0, late),
                            win_idx.index_select(0, late), kk.index_select(0, late),
                            k_safe.index_select(0, late), alpha, sub_blocks(blocks, late.numel()), gate,
                            check)
        if sub is None:
            return None
        out.index_copy_(0, late, sub.z if gate else sub.p)
        p_win, q_win = p_win.index_copy(0, late, sub.p_win), q_win.index_copy(0, late, sub.q_win)
        S, t = S.index_copy(0, late, sub.S), t.index_copy(0, late, sub.t)
        tail_rows.append(late)
        p_tail.append(sub.p)
    return Forward(None if gate else out, win_idx, p_win, q_win, S, t, _kth(s, kk), out if gate else None,
                   rows=torch.cat(tail_rows) if tail_rows else rows,
                   p_tail=torch.cat(p_tail) if len(p_tail) > 1 else (p_tail[0] if p_tail else None))


def _k_safe(kk: torch.Tensor, n: int) -> torch.Tensor:
    """(B,) budgets with k = 0 and k = n replaced by n/2, for the math that needs 0 < k < n."""
    return torch.where((kk <= 0) | (kk >= n), torch.full_like(kk, n / 2), kk)


# Rows sampled by _probe_prefers_wider; batches under four times as many rows are not probed.
_PROBE_ROWS = 64
# Inputs under this many entries never switch to the wider window: their passes over the tail stay
# in cache and cost less than a second top-K (at 256 × 2048, 7.9 ms with the passes, 10.7 with the switch).
_WIDER_MIN_ELEMS = 1 << 22


def _probe_prefers_wider(x: torch.Tensor, kk: torch.Tensor, alpha: float, K: int, K_wide: int,
                         wdt: torch.dtype) -> bool:
    """Whether a sample of rows says the top-K window would be given up for the top-``K_wide``
    one (see ``forward_on_window``'s ``wider``): then the batch skips its full-size ``topk`` at K.
    x: (B, n), kk: (B,). A guess: either answer gives exact results."""
    B, n = x.shape
    if B < 4 * _PROBE_ROWS or B * n < _WIDER_MIN_ELEMS:
        return False
    rows = torch.linspace(0, B - 1, _PROBE_ROWS, device=x.device).long()  # spread over the batch
    s64 = row_topk(x.index_select(0, rows), K)[0].to(wdt)
    k_r = kk.index_select(0, rows)
    k_safe = _k_safe(k_r, n)
    likely = _likely_tail_free(s64, k_r, k_safe, alpha, n, x.dtype)
    return 2 * int(likely.sum()) < _PROBE_ROWS and _wider_spares_tail(s64, k_safe, alpha, K_wide, x.dtype)


def _tail_pass(x: torch.Tensor, s_last: torch.Tensor, win_idx: torch.Tensor, alpha: float,
               blocks: list[slice]) -> tuple[torch.Tensor, torch.Tensor]:
    """(e^{(x_j − s_{K−1})/α} with the window zeroed: (R, n), T = its row sums: (R,) in x's dtype),
    block by block; the exponentials are turned into p in place by :func:`_p_pass`."""
    buf = torch.empty_like(x)
    tail_x = x.new_empty(x.shape[0])
    for rb in blocks:
        b = _tail_exp(x[rb], s_last[rb], alpha, buf[rb])
        b.scatter_(1, win_idx[rb], 0.0)
        torch.sum(b, dim=1, out=tail_x[rb])
    return buf, tail_x


def _p_pass(x: torch.Tensor, buf: torch.Tensor, win_idx: torch.Tensor, gamma: torch.Tensor,
            p_win: torch.Tensor, blocks: list[slice], gate: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(p, z = x ⊙ p or None): (R, n) each, p written over ``buf`` (the tail's exponentials) with
    off-window p = e^u·γ and the window's ``p_win`` (float64, (R, K))."""
    # Entries with e^u below flush/γ give p < 2^-100 and are flushed below; raising them to
    # (just under) flush/γ first keeps every product a normal number (a denormal product costs
    # a ~100-cycle microcode assist per element, and most of a row sits on the floor), so p is
    # bit for bit the plain product, flushed. When γ itself is below the flush level the whole
    # tail is zero: γ is set to 0 rather than left as a denormal factor.
    flush = _FLUSH_BELOW[x.dtype]
    raise_to = (flush * (1 - 1e-5) / gamma).clamp(max=1.0).to(x.dtype).unsqueeze(1)
    gamma_x = torch.where(gamma < flush, torch.zeros_like(gamma), gamma).to(x.dtype).unsqueeze(1)
    p_win_x = p_win.to(x.dtype)
    z = torch.empty_like(x) if gate else None
    for rb in blocks:
        b = torch.maximum(buf[rb], raise_to[rb], out=buf[rb]).mul_(gamma_x[rb])
        b.scatter_(1, win_idx[rb], p_win_x[rb])
        # Flush negligible p to exact zeros: denormals (and the products they make downstream,
        # e.g. r ⊙ p in SoftSAE) slow every later matmul by an order of magnitude on x86 CPUs.
        # Done after the window is written so that a tie block straddling the window edge gets
        # one value (flushing the tail alone broke exact ties there).
        torch.nn.functional.threshold_(b, flush, 0.0)
        if z is not None:
            torch.mul(x[rb], b, out=z[rb])
    return buf, z


def _full_forward(x: torch.Tensor, s: torch.Tensor, s64: torch.Tensor, win_idx: torch.Tensor,
                  kk: torch.Tensor, k_safe: torch.Tensor, alpha: float, blocks: list[slice], gate: bool,
                  check: bool) -> Forward | None:
    """The forward pass with the two passes over the tail, for every row of x: (R, n)."""
    n = x.shape[1]
    zero_rows, full_rows = kk <= 0, kk >= n
    buf, tail_x = _tail_pass(x, s[:, -1:], win_idx, alpha, blocks)
    tail = tail_x.to(s64.dtype)
    th = solve_threshold(s64, tail, k_safe, alpha, n)
    # Half a unit of slack keeps rounding in Φ from accepting a window that t only grazes.
    if check and not bool(((th.phi_last > k_safe + 0.5) | zero_rows | full_rows).all()):
        return None
    w = _on_window(s64, kk, n, th, tail, alpha)
    p, z = _p_pass(x, buf, win_idx, w.gamma, w.p_win, blocks, gate)
    return Forward(p, win_idx, w.p_win, w.q_win, w.S, w.t, _kth(s, kk), z, rows=None, p_tail=p)


class _Window(NamedTuple):
    t: torch.Tensor  # (B,) threshold, ±∞ for k = 0 or n
    gamma: torch.Tensor  # (B,) ½ e^{(s_{K−1} − t)/α}: off-window p_j = γ e^{(x_j − s_{K−1})/α}
    p_win: torch.Tensor  # (B, K)
    q_win: torch.Tensor  # (B, K)
    S: torch.Tensor  # (B,) Σ_j q_j over the whole row


def _on_window(s64: torch.Tensor, kk: torch.Tensor, n: int, th: Threshold, tail: torch.Tensor,
               alpha: float) -> _Window:
    """t, γ, and p, q on the window (float64), and S = Σq, from the solved threshold."""
    zero_rows, full_rows = kk <= 0, kk >= n
    ref, off = th.ref, th.off
    t = torch.where(zero_rows, math.inf, torch.where(full_rows, -math.inf, ref + alpha * off))
    special = zero_rows | full_rows  # t = ±∞; otherwise (x − t)/α = (x − ref)/α − off, exactly
    # Off-window p_j = ½ e^{(x_j − t)/α} = buf_j · ½ e^{(s_{K−1} − t)/α} (exponent ≤ 0).
    gamma = 0.5 * torch.exp(torch.where(special, (s64[:, -1] - t) / alpha,
                                        (s64[:, -1] - ref) / alpha - off))
    u_win = torch.where(special.unsqueeze(1), (s64 - t.unsqueeze(1)) / alpha,
                        (s64 - ref.unsqueeze(1)) / alpha - off.unsqueeze(1))
    # Laplace density and CDF share e = ½e^{−|u|}: q = e/α, p = 1 − e above t and e below.
    e = 0.5 * exp_no_subnormal(-u_win.abs())
    q_win = e / alpha
    # Σ_j q_j: the tail's q is p/α, and the tail's Σp is γ·T.
    S = (gamma * tail) / alpha + q_win.sum(dim=1)
    return _Window(t, gamma, torch.where(u_win > 0, 1.0 - e, e), q_win, S)


def _kth(s: torch.Tensor, kk: torch.Tensor) -> torch.Tensor:
    """The ⌊k⌋-th largest value per row from the window s (K > k), +∞ where ⌊k⌋ = 0."""
    rank = kk.floor().long().clamp(min=1, max=s.shape[1]) - 1
    return torch.where(kk >= 1, s.gather(1, rank.unsqueeze(1)).squeeze(1), torch.full_like(s[:, 0], math.inf))


# Rows are tried on the tail-free path when their window's last value lies at least this many α below
# the value at rank ⌈k⌉ (a guess only: each row's conditions are verified): then γ < flush.
_TAIL_FREE_GAP = {dtype: -math.log(flush) for dtype, flush in _FLUSH_BELOW.items()}


def _likely_tail_free(s64: torch.Tensor, kk: torch.Tensor, k_safe: torch.Tensor, alpha: float, n: int,
                      dtype: torch.dtype) -> torch.Tensor:
    """(B,) bool: rows whose tail will probably prove negligible (k = 0, or a wide gap below rank ⌈k⌉)."""
    K = s64.shape[1]
    at_k = s64.gather(1, k_safe.ceil().long().clamp(max=K - 1).unsqueeze(1)).squeeze(1)
    return (kk <= 0) | (((s64[:, -1] - at_k) / alpha < -_TAIL_FREE_GAP[dtype]) & (kk < n))


def _wider_spares_tail(s64: torch.Tensor, k_safe: torch.Tensor, alpha: float, K_wide: int,
                       dtype: torch.dtype) -> bool:
    """Whether a top-``K_wide`` window would probably let most rows skip their tail passes.

    A guess from the narrow window s64: (B, K): each row's spacing of values below rank ⌈k⌉,
    extrapolated to rank K_wide − 1, against the gap ``_likely_tail_free`` asks for. Wrong
    guesses cost time (one more ``topk``, or the passes), never exactness.
    """
    K = s64.shape[1]
    c = k_safe.ceil().long().clamp(max=K - 2)
    at_c = s64.gather(1, c.unsqueeze(1)).squeeze(1)
    per_rank = (at_c - s64[:, -1]) / (K - 1 - c).to(s64.dtype)
    promising = per_rank * (K_wide - 1 - c).to(s64.dtype) / alpha > _TAIL_FREE_GAP[dtype]
    return 2 * int(promising.sum()) >= s64.shape[0]


def _tail_free_rows(w: _Window, th: Threshold, likely: torch.Tensor, zero_rows: torch.Tensor,
                    full_rows: torch.Tensor, alpha: float, n: int, K: int,
                    dtype: torch.dtype) -> torch.Tensor:
    """(B,) bool: the ``likely`` rows whose results, solved with T = 0, are exact without their tail.

    At small α the window's last value lies many α below t, so every off-window term
    γ·e^{(x_j − s_{K−1})/α} ≤ γ = ½e^{(s_{K−1} − t)/α} is below the flush level: the full path
    returns off-window p = 0 exactly (it zeroes γ there). A row is accepted when, moreover, any
    tail sum T in [0, n − K] (each term is ≤ 1) leaves t unchanged (``solve_threshold``'s
    ``stable``) and leaves S = γT/α + Σ_window q unchanged in float64. Then its p and z are zero
    but for the window, and every result (gradients included) equals the full path's bit for bit,
    without the two passes over its row. Rows with k = 0 are accepted (t = +∞); k = n never is.
    """
    S_hi = (w.gamma * float(n - K)) / alpha + w.S  # the largest S any tail could give
    negligible = (w.gamma < _FLUSH_BELOW[dtype]) & (S_hi == w.S)
    return likely & (zero_rows | (th.stable & negligible & ~full_rows))
