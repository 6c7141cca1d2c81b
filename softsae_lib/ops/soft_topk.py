"""LapSum soft top-k (Struski et al., ICML 2025, arXiv 2503.06242), exact and in pure PyTorch.

For a row x ∈ R^n, a budget k ∈ [0, n] and a scale α > 0 the soft top-k mask is

    p_j = F((x_j − t) / α),   F = standard Laplace CDF,   t such that Σ_j p_j = k,

so p ∈ [0, 1]^n, Σp = k exactly, larger x gives larger p, and as α → 0 the mask tends to
"ones on the top ⌊k⌋, frac(k) on the next, zeros elsewhere" (``docs/method.md`` §2.8).

How t is found (``docs/method.md`` §2.2 and §2.7):

* Sort-free window. With K ≥ 2k + 2 the soft count at the K-th largest value satisfies
  Φ(s_{K−1}) ≥ K/2 > k, so the threshold lies inside the top-K window and only
  ``topk(x, K)`` plus one tail sum T = Σ_{j ∉ window} exp((x_j − s_{K−1})/α) are needed.
  When K would reach n the window is the whole sorted row (the plain sort-based LapSum).
* The one-sided sums A_p, B_p of the window are computed in log space with ``logcumsumexp``
  in float64, so nothing overflows for any α; the root of the piecewise-exponential equation
  uses the cancellation-free closed form with R evaluated in log space, which also covers an
  exactly integer k whose q = ab·e^{−δ} underflows.
* Tail elements (outside the window) always sit below t, so their p is ½·e^{(x_j−t)/α}: it is
  computed from the same buffer as T with one multiply, and their derivative q_j = p_j/α needs
  no second exponential in the backward pass. Window elements are recomputed in float64.

Backward (implicit differentiation, ``docs/method.md`` §2.4), with q_j = f((x_j − t)/α)/α, S = Σq,
v̄ = Σ q v / S:  grad_x = q ⊙ (v − v̄),  grad_k = v̄,  grad_α = −(1/α) Σ_i q_i v_i (x_i − x̄).

Edge cases: k = 0 gives all zeros and k = n all ones (t = ±∞, zero gradients); ties are exact.
Unlike the official C++ extension (which returns Σp = 0.69 at k = 0 and n − ½ at k = n) both
ends are exact here. Entries of p below 2^-100 (fp32; 2^-1000 in fp64) are
returned as exact zeros so that no denormal numbers reach downstream matmuls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

__all__ = ["GateOutput", "soft_topk", "soft_topk_gate", "window_size"]

# Floor of the tail exponents u = (x − s_{K−1})/α, per dtype: below ln of the smallest normal
# float (libm's slow path for underflowing exp costs ~10x), and low enough that ½e^floor is under
# the flush level below, so every floored entry ends up an exact 0 in p whatever t is.
_EXP_FLOOR = {torch.float32: -70.0, torch.float64: -694.0}
# p below this is returned as 0 (≈ 2^-100 / 2^-1000): far below the rounding error of
# any row sum Σp = k ≥ 1e-20, so Σp = k is unaffected, and no denormals reach later products.
_FLUSH_BELOW = {torch.float32: 2.0**-100, torch.float64: 2.0**-1000}
# Rows whose (max − min)/α exceeds this get exact pairwise log sums (error of the pivot-centred
# ones grows like span/α · 2^-53).
_EXACT_SPAN = 1e8


def window_size(k_max: float, n: int) -> int:
    """Size K of the top-K window that provably contains the threshold for every k ≤ k_max."""
    return min(n, 2 * math.ceil(k_max) + 2)


# Rows per block of the full-size passes: ~2^18 elements (1 MiB in fp32) per thread keep a
# block's buffers in the per-core L2 cache, so the 5-7 elementwise passes per block cost one
# trip to DRAM instead of one each (the passes over a 4096 × 16384 batch were bandwidth-bound).
# With several threads every op of a block is a parallel region whose start and end cost tens
# of microseconds (more on a busy machine), so blocks are 4× larger there: measured at 2 threads,
# 2^20 elements per thread beat 2^18 (1.38× vs 1.59× hard top-k) though they spill from L2.
_BLOCK_ELEMS = 1 << 18
_PARALLEL_BLOCK_SCALE = 4

# Extra columns of the first, narrow window beyond ⌈k_max⌉ + 1 (see _lapsum_forward).
_WINDOW_MARGIN = 8


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


def _laplace_cdf(u: torch.Tensor) -> torch.Tensor:
    e = 0.5 * torch.exp(-u.abs())
    return torch.where(u > 0, 1.0 - e, e)


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


def _solve_threshold(s: torch.Tensor, tail: torch.Tensor, k: torch.Tensor, alpha: float,
                     n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Threshold t per row from the sorted window, and the soft count at the window's last knot.

    s: (B, K) descending window values (float64); tail: (B,) T relative to s_{K−1};
    k: (B,) budgets in (0, n); returns (ref, off, Φ(s_{K−1})): (B,) float64 each, with t = ref + α·off
    and ref a window value, so that (x − t)/α = (x − ref)/α − off stays exact when α is below ref's
    resolution (ref + α·off would round to ref and put p = ½ on a whole tie block); the window holds
    t when Φ(s_{K−1}) > k.
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
    far = (s[:, 0] - s[:, -1]) / alpha > _EXACT_SPAN
    if bool(far.any()):  # |z| so large that the pivot-centred sums lose tie multiplicities
        ln_a[far], ln_b[far] = _exact_log_sums(s[far], tail[far], alpha)
    # Soft count at each knot: Φ(s_p) = p + ½ + ½(A_p − B_p); non-decreasing, flat across ties.
    idx = torch.arange(K, device=s.device, dtype=s.dtype)
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
    return ref, torch.where(upper, off_upper, torch.where(lower, off_lower, off)), phi[:, -1]


@dataclass
class _Forward:
    """What the forward pass leaves for the backward pass (all per row: (B,), or (B, K) window)."""

    p: torch.Tensor  # (B, n) the mask, in x's dtype
    win_idx: torch.Tensor  # (B, K) positions of the top-K window
    p_win: torch.Tensor  # (B, K) float64 p on the window
    q_win: torch.Tensor  # (B, K) float64 q = f((x − t)/α)/α on the window
    S: torch.Tensor  # (B,) Σ_j q_j
    t: torch.Tensor  # (B,) threshold, ±∞ for k = 0 or n
    kth: torch.Tensor  # (B,) the ⌊k⌋-th largest value (the hard top-⌊k⌋ cut), +∞ when ⌊k⌋ = 0
    z: torch.Tensor | None = None  # (B, n) x ⊙ p, only for the gate


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


def _lapsum_forward(x: torch.Tensor, k: torch.Tensor, alpha: float, window: int | None,
                    gate: bool = False) -> _Forward:
    """x: (B, n) float32/float64, finite; k: (B, 1) in [0, n]; gate: also form z = x ⊙ p.

    Without an explicit window a narrow one (⌈k_max⌉ + 1 + _WINDOW_MARGIN columns) is tried
    first: ``topk`` costs grow with K (K = 130 takes ~1.4× K = 64 at n = 16384), and at small α
    the threshold sits a few ranks below k. The result is exact whenever Φ(s_{K−1}) > k in every
    row (t then lies inside the window, all the math below only needs that); otherwise the
    batch is redone with the provably sufficient window 2⌈k_max⌉ + 2. The gate always uses the
    latter, since it returns the window's positions.
    """
    B, n = x.shape
    wdt = torch.float64 if x.device.type != "mps" else torch.float32
    kk = k.reshape(B).to(wdt)
    if window is not None:
        return _forward_on_window(x, kk, alpha, min(n, window), gate, wdt, check=False)
    k_max = float(kk.max())
    K_safe = window_size(k_max, n)
    K_narrow = min(n, math.ceil(k_max) + 1 + _WINDOW_MARGIN)
    # The gate promises callers the full window_size(k_max) columns of positions (GateOutput.top).
    if K_narrow < K_safe and not gate:
        f = _forward_on_window(x, kk, alpha, K_narrow, gate, wdt, check=True)
        if f is not None:
            return f
    return _forward_on_window(x, kk, alpha, K_safe, gate, wdt, check=False)


def _forward_on_window(x: torch.Tensor, kk: torch.Tensor, alpha: float, K: int, gate: bool,
                       wdt: torch.dtype, check: bool) -> _Forward | None:
    """The forward pass on a top-K window; with ``check``, None unless every row's t lies in it.

    x: (B, n); kk: (B,) budgets in wdt. The full-size work is two passes over x in blocks of
    rows (see _row_blocks): the tail sum T, then p (and z) once t is known; everything else
    lives on the (B, K) window.
    """
    B, n = x.shape
    if K < n:
        s, win_idx = torch.topk(x, K, dim=1, sorted=True)
    else:
        s, win_idx = torch.sort(x, dim=1, descending=True)
    s_last = s[:, -1:]
    blocks = _row_blocks(B, n)
    # Tail sum T = Σ_{j ∉ window} e^{(x_j − s_{K−1})/α}, block by block; the exponentials are
    # kept in the output buffer and turned into p in place once t is known.
    buf = torch.empty_like(x)
    tail_x = x.new_empty(B)
    for rb in blocks:
        b = _tail_exp(x[rb], s_last[rb], alpha, buf[rb])
        b.scatter_(1, win_idx[rb], 0.0)
        torch.sum(b, dim=1, out=tail_x[rb])
    tail = tail_x.to(wdt)
    s64 = s.to(wdt)
    zero_rows = kk <= 0
    full_rows = kk >= n
    k_safe = torch.where(zero_rows | full_rows, torch.full_like(kk, n / 2), kk)
    ref, off, phi_last = _solve_threshold(s64, tail, k_safe, alpha, n)
    # Half a unit of slack keeps rounding in Φ from accepting a window that t only grazes.
    if check and not bool(((phi_last > k_safe + 0.5) | zero_rows | full_rows).all()):
        return None
    t = torch.where(zero_rows, math.inf, torch.where(full_rows, -math.inf, ref + alpha * off))
    special = zero_rows | full_rows  # t = ±∞; otherwise (x − t)/α = (x − ref)/α − off, exactly
    # Off-window p_j = ½ e^{(x_j − t)/α} = buf_j · ½ e^{(s_{K−1} − t)/α} (exponent ≤ 0).
    gamma = 0.5 * torch.exp(torch.where(special, (s64[:, -1] - t) / alpha,
                                        (s64[:, -1] - ref) / alpha - off))
    u_win = torch.where(special.unsqueeze(1), (s64 - t.unsqueeze(1)) / alpha,
                        (s64 - ref.unsqueeze(1)) / alpha - off.unsqueeze(1))
    p_win = _laplace_cdf(u_win)
    # Off-window p = e^u·γ. Entries with e^u below flush/γ give p < 2^-100 and are flushed
    # below; raising them to (just under) flush/γ first keeps every product a normal number (a
    # denormal product costs a ~100-cycle microcode assist per element, and most of a row sits
    # on the floor), so p is bit for bit the plain product, flushed. When γ itself is below the
    # flush level the whole tail is zero: γ is set to 0 rather than left as a denormal factor.
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
        torch.nn.functional.threshold_(b, _FLUSH_BELOW[x.dtype], 0.0)
        if z is not None:
            torch.mul(x[rb], b, out=z[rb])
    q_win = 0.5 * torch.exp(-u_win.abs()) / alpha
    # Σ_j q_j: the tail's q is p/α, and the tail's Σp is γ·T.
    S = (gamma * tail) / alpha + q_win.sum(dim=1)
    rank = kk.floor().long().clamp(min=1, max=s.shape[1]) - 1  # the window holds rank ⌊k⌋ (K > k)
    kth = torch.where(kk >= 1, s.gather(1, rank.unsqueeze(1)).squeeze(1), torch.full_like(s[:, 0], math.inf))
    return _Forward(buf, win_idx, p_win, q_win, S, t, kth, z)


def _vbar(pv_tail: torch.Tensor, qv_win: torch.Tensor, S: torch.Tensor,
          alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ q v, v̄ = Σ q v / S) per row: (R,) each, from the tail's Σ p v and the window's Σ q v
    (α = 1 when the tail's sum is already Σ q v).

    The tail (q = p/α, p stored) is summed directly with the window zeroed: subtracting the
    window from a full Σ p v cancels catastrophically (error ~ eps·k/α, huge next to a tiny S
    at an integer k). The window part is exact float64.
    """
    qv = pv_tail.to(S.dtype) / alpha + qv_win
    vbar = torch.where(S > 0, qv / torch.where(S > 0, S, torch.ones_like(S)), torch.zeros_like(qv))
    return qv, vbar


def _tail_dot(p: torch.Tensor, v_tail: torch.Tensor) -> torch.Tensor:
    """Σ_j p_j v_j per row of two (R, n) blocks: (R,). A plain product and sum: einsum lowers
    "bn,bn->b" to a batched 1×n·n×1 matmul that is several times slower on CPU."""
    return torch.mul(p, v_tail).sum(dim=1)


class _SoftTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, k: torch.Tensor, alpha_t: torch.Tensor, alpha: float,
                window: int | None):
        """x: (B, n) float32/float64; k: (B, 1); alpha_t: the 0-d tensor (or None) for autograd."""
        f = _lapsum_forward(x, k, alpha, window)
        ctx.alpha = alpha
        ctx.save_for_backward(f.p, f.win_idx, f.p_win, f.q_win, f.S, f.t,
                              x if ctx.needs_input_grad[2] else None)
        return f.p

    @staticmethod
    def backward(ctx, v: torch.Tensor):
        p, win_idx, p_win, q_win, S, t, x = ctx.saved_tensors
        alpha = ctx.alpha
        v = v.contiguous()
        B, n = v.shape
        v_win = v.gather(1, win_idx).to(S.dtype)
        qv_win = (q_win * v_win).sum(dim=1)
        want_x = ctx.needs_input_grad[0]
        # The window-zeroed copy of v is then turned into grad_x in place, one block of rows at a
        # time so that the block stays in cache between the passes (rows are independent).
        qvb = torch.empty_like(v)
        qv = torch.empty_like(S)
        vbar = torch.empty_like(S)
        zero = v.new_zeros(())
        for rb in _row_blocks(B, n):
            # qvb = q ⊙ v = (p/α) ⊙ v in one pass (addcmul onto a broadcast 0), the window zeroed;
            # its row sums are the tail's Σ q v.
            b = torch.addcmul(zero, p[rb], v[rb], value=1.0 / alpha, out=qvb[rb])
            b.scatter_(1, win_idx[rb], 0.0)
            qv[rb], vbar[rb] = _vbar(b.sum(dim=1), qv_win[rb], S[rb], 1.0)
            if want_x:
                # Tail: q(v − v̄) = q v − (p/α) v̄; the window is overwritten with its exact q(v − v̄).
                b.addcmul_(p[rb], vbar[rb].to(v.dtype).unsqueeze(1), value=-1.0 / alpha)
                exact = q_win[rb] * (v_win[rb] - vbar[rb].unsqueeze(1))
                b.scatter_(1, win_idx[rb], exact.to(v.dtype))
        grad_x = qvb if want_x else None
        grad_k = grad_alpha = None
        if ctx.needs_input_grad[1]:
            grad_k = vbar.unsqueeze(1).to(v.dtype)
        if ctx.needs_input_grad[2]:
            # grad_α = −(1/α) Σ q v (x − x̄), centred on t to limit cancellation. Rows with k = 0
            # or n have t = ±∞ and q ≡ 0: centre them on 0, else 0·∞ = NaN poisons the batch sum.
            t_c = torch.where(torch.isfinite(t), t, torch.zeros_like(t))
            xc = torch.sub(x, t_c.to(x.dtype).unsqueeze(1))
            q_full = torch.where(p <= 0.5, p, 1 - p) / alpha
            q_full.scatter_(1, win_idx, q_win.to(q_full.dtype))
            sq_x = _tail_dot(q_full, xc).to(S.dtype)
            sqv_x = _tail_dot(q_full * v, xc).to(S.dtype)
            S_safe = torch.where(S > 0, S, torch.ones_like(S))
            xbar_c = torch.where(S > 0, sq_x / S_safe, torch.zeros_like(sq_x))
            grad_alpha = (-(sqv_x - xbar_c * qv) / alpha).sum().to(v.dtype)
        return grad_x, grad_k, grad_alpha, None, None


class _SoftTopKGate(torch.autograd.Function):
    """z = x ⊙ p(x, k) with one fused backward (saves three full-size buffers per step)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: torch.Tensor, alpha: float, window: int | None):
        f = _lapsum_forward(x, k, alpha, window, gate=True)
        ctx.alpha = alpha
        ctx.save_for_backward(x, f.p, f.win_idx, f.p_win, f.q_win, f.S)
        t, kth = f.t.to(x.dtype), f.kth
        ctx.mark_non_differentiable(t, kth, f.win_idx)
        return f.z, t, kth, f.win_idx

    @staticmethod
    def backward(ctx, g: torch.Tensor, _g_t: torch.Tensor, _g_kth: torch.Tensor, _g_idx: torch.Tensor):
        x, p, win_idx, p_win, q_win, S = ctx.saved_tensors
        alpha = ctx.alpha
        g = g.contiguous()
        B, n = g.shape
        # Upstream of p is v = g ⊙ x; dz/dx = p + x·dp/dx.
        g_win = g.gather(1, win_idx).to(S.dtype)
        v_win = g_win * x.gather(1, win_idx).to(S.dtype)
        qv_win = (q_win * v_win).sum(dim=1)
        want_x = ctx.needs_input_grad[0]
        buf = torch.empty_like(g)
        vbar = torch.empty_like(S)
        zero = g.new_zeros(())
        for rb in _row_blocks(B, n):  # blocks of rows stay in cache across the passes
            # b = q ⊙ v = (p/α) ⊙ g ⊙ x with the window zeroed; its row sums are the tail's Σ q v.
            b = torch.addcmul(zero, g[rb], x[rb], value=1.0 / alpha, out=buf[rb])
            b.scatter_(1, win_idx[rb], 0.0).mul_(p[rb])
            vbar[rb] = _vbar(b.sum(dim=1), qv_win[rb], S[rb], 1.0)[1]
            if want_x:
                # Tail: g·p + q(v − v̄) = q v + p·g − (p/α)·v̄; the window gets its exact value.
                vb = vbar[rb].unsqueeze(1)
                b.addcmul_(p[rb], g[rb]).addcmul_(p[rb], vb.to(g.dtype), value=-1.0 / alpha)
                exact = g_win[rb] * p_win[rb] + q_win[rb] * (v_win[rb] - vb)
                b.scatter_(1, win_idx[rb], exact.to(g.dtype))
        grad_x = buf if want_x else None
        grad_k = None
        if ctx.needs_input_grad[1]:
            grad_k = vbar.unsqueeze(1).to(g.dtype)
        return grad_x, grad_k, None, None


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
    p = _SoftTopK.apply(x2, k2, alpha_t, alpha_val, window)
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
    K = the window size (> ⌊k⌋ unless K = n); its first ⌊k⌋ columns are the hard top-⌊k⌋."""


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
    z, t, kth, top = _SoftTopKGate.apply(x2, k2, alpha_val, window)
    return GateOutput(z.reshape(x.shape).to(x.dtype), t.reshape(lead).to(x.dtype),
                      kth.reshape(lead).to(x.dtype), top.reshape(*lead, top.shape[-1]))
