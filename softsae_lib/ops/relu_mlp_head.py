"""A one-hidden-layer ReLU MLP with a scalar output, with a memory-light fused backward.

SoftSAE's Dynamic Sparsity MLP (``docs/method.md`` §1.2) is

    logit = w₂ᵀ ReLU(W₁ᵀ(x − b) + b₁) + b₂,       x: (B, d), W₁: (d, F), b₁, w₂: (F,), b: (d,)

with a hidden layer as wide as the dictionary (F up to 65536). Autograd would store h and, in the
backward pass, build two fresh (B, F) buffers: g ⊗ w₂, then the ReLU mask applied to it. Here the
weight gradient is regrouped as

    ∂L/∂W₁ = ((x − b) ⊙ g)ᵀ · 1[h > 0]  scaled column-wise by w₂,

the same d×B×F matmul autograd would run, with one (B, F) buffer (the 0/1 mask) instead of two
(h itself is left intact, so a retained graph can run backward again). b's gradient is
−(∂L/∂b₁) W₁ᵀ, a vector-matrix product. Values and gradients equal the unfused graph
(checked against autograd and by ``gradcheck`` in the tests).

Under autocast the hidden layer may run in bf16; w₂ᵀh and everything after it run in float32 so
the output is not quantised (SoftSAE's k̂ must stay continuous).
"""

from __future__ import annotations

import torch

__all__ = ["relu_mlp_head"]


class _ReLUMLPHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, b: torch.Tensor, W1: torch.Tensor, b1: torch.Tensor,
                w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
        xc = x - b
        h = torch.addmm(b1, xc, W1).relu_()  # may run in bf16 under autocast
        out = torch.promote_types(h.dtype, torch.float32)  # float32, or float64 for float64 inputs
        with torch.autocast(x.device.type, enabled=False):
            logit = torch.addmv(b2.to(out), h.to(out), w2.to(out))
        ctx.save_for_backward(xc, h, W1, w2)
        return logit

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        xc, h, W1, w2 = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_x = grad_b = grad_W1 = grad_b1 = grad_w2 = grad_b2 = None
        if need[4]:
            grad_w2 = (h.to(g.dtype).t() @ g).to(w2.dtype)
        if need[5]:
            grad_b2 = g.sum()
        mask = h.sign()  # h ≥ 0, so sign(h) = 1[h > 0]
        w2g = w2.to(g.dtype)
        g_h = g.to(mask.dtype)
        if need[2]:
            a = (xc * g.to(xc.dtype).unsqueeze(1)).to(mask.dtype)  # (B, d)
            if W1.stride(0) == 1:  # W1 stored as (F, d) row-major (SAEs tie it to W_decᵀ): match it
                grad_W1 = (mask.t() @ a).to(g.dtype).mul_(w2g.unsqueeze(1)).t()
            else:
                grad_W1 = (a.t() @ mask).to(g.dtype).mul_(w2g)
            grad_W1 = grad_W1.to(W1.dtype)
        col = (g_h @ mask).to(g.dtype).mul_(w2g) if (need[1] or need[3]) else None  # ∂L/∂b₁: (F,)
        if need[3]:
            grad_b1 = col
        if need[1]:
            grad_b = -(col.to(W1.dtype) @ W1.t())
        if need[0]:
            # rarely needed (SAE inputs carry no gradient): the (B, F) product is built only here
            grad_x = (mask * (g_h.unsqueeze(1) * w2.to(mask.dtype))) @ W1.t().to(mask.dtype)
            grad_x = grad_x.to(xc.dtype)
        return grad_x, grad_b, grad_W1, grad_b1, grad_w2, grad_b2


def relu_mlp_head(x: torch.Tensor, b: torch.Tensor, W1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                  b2: torch.Tensor) -> torch.Tensor:
    """w₂ᵀ ReLU(W₁ᵀ(x − b) + b₁) + b₂: (B,) float32 (float64 for float64 inputs).

    x: (B, d), b: (d,), W1: (d, F), b1 and w2: (F,), b2: () scalar.
    """
    if x.dim() != 2 or W1.shape[0] != x.shape[1] or b1.shape != (W1.shape[1],) or w2.shape != b1.shape:
        raise ValueError(f"relu_mlp_head: shapes x {tuple(x.shape)}, W1 {tuple(W1.shape)}, b1 "
                         f"{tuple(b1.shape)}, w2 {tuple(w2.shape)} do not fit (B, d), (d, F), (F,), (F,)")
    return _ReLUMLPHead.apply(x, b, W1, b1, w2, b2)
