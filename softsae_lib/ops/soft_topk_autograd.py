"""Autograd functions of the LapSum soft top-k: the mask p, and the fused gate z = x ⊙ p.

Backward (implicit differentiation, ``docs/method.md`` §2.4), with q_j = f((x_j − t)/α)/α, S = Σq,
v̄ = Σ q v / S:  grad_x = q ⊙ (v − v̄),  grad_k = v̄,  grad_α = −(1/α) Σ_i q_i v_i (x_i − x̄).
The tail's q is p/α (p is stored), the window's q is kept exact in float64 by the forward pass.
"""

from __future__ import annotations

import torch

from softsae_lib.ops.soft_topk_window import lapsum_forward, sub_blocks

__all__ = ["SoftTopK", "SoftTopKGate"]


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


def _on_window_only(like: torch.Tensor, win_idx: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """A (B, n) gradient that is ``win`` (float64, (B, K)) on the window and 0 elsewhere."""
    return torch.zeros_like(like).scatter_(1, win_idx, win.to(like.dtype))


def _on_rows(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """``t`` restricted to ``rows`` (all of it when rows is None)."""
    return t if rows is None else t.index_select(0, rows)


class SoftTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, k: torch.Tensor, alpha_t: torch.Tensor, alpha: float,
                window: int | None, blocks: list[slice]):
        """x: (B, n) float32/float64; k: (B, 1); alpha_t: the 0-d tensor (or None) for autograd;
        blocks: row slices of the full-size passes, forward and backward."""
        f = lapsum_forward(x, k, alpha, window, blocks)
        ctx.alpha, ctx.blocks = alpha, blocks
        ctx.save_for_backward(f.p, f.p_tail, f.rows, f.win_idx, f.q_win, f.S, f.t,
                              x if ctx.needs_input_grad[2] else None)
        return f.p

    @staticmethod
    def backward(ctx, v: torch.Tensor):
        p, p_tail, rows, win_idx, q_win, S, t, x = ctx.saved_tensors
        alpha = ctx.alpha
        v = v.contiguous()
        v_win = v.gather(1, win_idx).to(S.dtype)
        qv_win = (q_win * v_win).sum(dim=1)
        want_x = ctx.needs_input_grad[0]
        if ctx.needs_input_grad[2]:  # grad_α reads the whole mask: every row takes the tail passes
            p_tail, rows = p, None
        # Rows off the window-only path (``rows``; None: all) add their tail's Σ q v to v̄, and get
        # grad_x off the window. The window-zeroed copy of v is turned into grad_x in place, one
        # block of rows at a time so that the block stays in cache between the passes.
        qv, vbar = _vbar(torch.zeros_like(S), qv_win, S, 1.0)
        grad_x = None if not want_x or rows is None else \
            _on_window_only(v, win_idx, q_win * (v_win - vbar.unsqueeze(1)))
        if p_tail is not None:
            v_t, idx_t, q_t, v_win_t = (_on_rows(a, rows) for a in (v, win_idx, q_win, v_win))
            qv_t, S_t = _on_rows(qv_win, rows), _on_rows(S, rows)
            qvb = torch.empty_like(v_t)
            qv_r, vbar_r = torch.empty_like(S_t), torch.empty_like(S_t)
            zero = v.new_zeros(())
            for rb in ctx.blocks if rows is None else sub_blocks(ctx.blocks, rows.numel()):
                # qvb = q ⊙ v = (p/α) ⊙ v in one pass (addcmul onto a broadcast 0), the window
                # zeroed; its row sums are the tail's Σ q v.
                b = torch.addcmul(zero, p_tail[rb], v_t[rb], value=1.0 / alpha, out=qvb[rb])
                b.scatter_(1, idx_t[rb], 0.0)
                qv_r[rb], vbar_r[rb] = _vbar(b.sum(dim=1), qv_t[rb], S_t[rb], 1.0)
                if want_x:
                    # Tail: q(v − v̄) = q v − (p/α) v̄; the window gets its exact q(v − v̄).
                    b.addcmul_(p_tail[rb], vbar_r[rb].to(v.dtype).unsqueeze(1), value=-1.0 / alpha)
                    exact = q_t[rb] * (v_win_t[rb] - vbar_r[rb].unsqueeze(1))
                    b.scatter_(1, idx_t[rb], exact.to(v.dtype))
            if rows is None:
                qv, vbar, grad_x = qv_r, vbar_r, qvb if want_x else None
            else:
                qv, vbar = qv.index_copy(0, rows, qv_r), vbar.index_copy(0, rows, vbar_r)
                if want_x:
                    grad_x.index_copy_(0, rows, qvb)
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
        return grad_x, grad_k, grad_alpha, None, None, None


class SoftTopKGate(torch.autograd.Function):
    """z = x ⊙ p(x, k) with one fused backward (saves three full-size buffers per step)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: torch.Tensor, alpha: float, window: int | None,
                blocks: list[slice]):
        f = lapsum_forward(x, k, alpha, window, blocks, gate=True)
        ctx.alpha, ctx.blocks = alpha, blocks
        ctx.save_for_backward(x, f.p_tail, f.rows, f.win_idx, f.p_win, f.q_win, f.S)
        t, kth = f.t.to(x.dtype), f.kth
        ctx.mark_non_differentiable(t, kth, f.win_idx)
        return f.z, t, kth, f.win_idx

    @staticmethod
    def backward(ctx, g: torch.Tensor, _g_t: torch.Tensor, _g_kth: torch.Tensor, _g_idx: torch.Tensor):
        x, p_tail, rows, win_idx, p_win, q_win, S = ctx.saved_tensors
        alpha = ctx.alpha
        g = g.contiguous()
        # Upstream of p is v = g ⊙ x; dz/dx = p + x·dp/dx.
        g_win = g.gather(1, win_idx).to(S.dtype)
        v_win = g_win * x.gather(1, win_idx).to(S.dtype)
        qv_win = (q_win * v_win).sum(dim=1)
        want_x = ctx.needs_input_grad[0]
        # Window-only rows (p = q = 0 off the window: so is the gradient there) ...
        vbar = _vbar(torch.zeros_like(S), qv_win, S, 1.0)[1]
        grad_x = None if not want_x or rows is None else \
            _on_window_only(g, win_idx, g_win * p_win + q_win * (v_win - vbar.unsqueeze(1)))
        if p_tail is not None:  # ... and the rows whose tail carries weight (``rows``; None: all)
            g_t, x_t, idx_t = (_on_rows(a, rows) for a in (g, x, win_idx))
            g_win_t, v_win_t, p_win_t, q_t, qv_t, S_t = (
                _on_rows(a, rows) for a in (g_win, v_win, p_win, q_win, qv_win, S))
            buf = torch.empty_like(g_t)
            vbar_r = torch.empty_like(S_t)
            zero = g.new_zeros(())
            for rb in ctx.blocks if rows is None else sub_blocks(ctx.blocks, rows.numel()):
                # b = q ⊙ v = (p/α) ⊙ g ⊙ x with the window zeroed; its row sums are the tail's Σ q v.
                b = torch.addcmul(zero, g_t[rb], x_t[rb], value=1.0 / alpha, out=buf[rb])
                b.scatter_(1, idx_t[rb], 0.0).mul_(p_tail[rb])
                vbar_r[rb] = _vbar(b.sum(dim=1), qv_t[rb], S_t[rb], 1.0)[1]
                if want_x:
                    # Tail: g·p + q(v − v̄) = q v + p·g − (p/α)·v̄; the window gets its exact value.
                    vb = vbar_r[rb].unsqueeze(1)
                    b.addcmul_(p_tail[rb], g_t[rb]).addcmul_(p_tail[rb], vb.to(g.dtype), value=-1.0 / alpha)
                    exact = g_win_t[rb] * p_win_t[rb] + q_t[rb] * (v_win_t[rb] - vb)
                    b.scatter_(1, idx_t[rb], exact.to(g.dtype))
            if rows is None:
                vbar, grad_x = vbar_r, buf if want_x else None
            else:
                vbar = vbar.index_copy(0, rows, vbar_r)
                if want_x:
                    grad_x.index_copy_(0, rows, buf)
        grad_k = None
        if ctx.needs_input_grad[1]:
            grad_k = vbar.unsqueeze(1).to(g.dtype)
        return grad_x, grad_k, None, None, None
