"""The fused k-estimator head equals the plain autograd graph, in values and every gradient."""

from __future__ import annotations

import pytest
import torch

from softsae_lib.ops.relu_mlp_head import relu_mlp_head


def _inputs(dtype: torch.dtype, B: int = 12, d: int = 5, F: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d, generator=g, dtype=dtype)
    b = (torch.randn(d, generator=g, dtype=dtype) * 0.3)
    W1 = torch.randn(d, F, generator=g, dtype=dtype)
    b1 = torch.randn(F, generator=g, dtype=dtype) * 0.5  # some hidden units off for some rows
    w2 = torch.randn(F, generator=g, dtype=dtype)
    b2 = torch.randn((), generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, b, W1, b1, w2, b2)]


def _reference(x, b, W1, b1, w2, b2):
    return torch.relu((x - b) @ W1 + b1) @ w2 + b2


def test_values_and_gradients_match_autograd():
    ins = _inputs(torch.float32)
    ref_ins = [t.detach().clone().requires_grad_() for t in ins]
    out, ref = relu_mlp_head(*ins), _reference(*ref_ins)
    assert out.dtype == torch.float32 and out.shape == (12,)
    torch.testing.assert_close(out, ref)
    g = torch.randn(12)
    out.backward(g)
    ref.backward(g)
    for name, a, r in zip(("x", "b", "W1", "b1", "w2", "b2"), ins, ref_ins, strict=True):
        torch.testing.assert_close(a.grad, r.grad, msg=f"gradient of {name}")
    # the hidden layer was partly inactive, so the ReLU mask mattered
    h = (ins[0] - ins[1]) @ ins[2] + ins[3]
    assert 0 < (h > 0).float().mean() < 1


def test_gradcheck_float64():
    ins = _inputs(torch.float64, B=6, d=3, F=7, seed=1)
    assert torch.autograd.gradcheck(relu_mlp_head, ins)


def test_only_requested_gradients_are_computed():
    x, b, W1, b1, w2, b2 = _inputs(torch.float32)
    x.requires_grad_(False)
    relu_mlp_head(x, b, W1, b1, w2, b2).sum().backward()
    assert x.grad is None and all(t.grad is not None for t in (b, W1, b1, w2, b2))


def test_shape_errors_name_the_shapes():
    x, b, W1, b1, w2, b2 = _inputs(torch.float32)
    with pytest.raises(ValueError, match=r"W1 \(5, 9\).*w2 \(8,\)"):
        relu_mlp_head(x, b, W1, b1, w2[:8], b2)


def test_weight_gradient_keeps_a_transposed_layout():
    """SAEs store W1 = W_decᵀ as an (F, d) row-major buffer; its gradient comes in that layout."""
    ins = _inputs(torch.float32, seed=2)
    ref_ins = [t.detach().clone().requires_grad_() for t in ins]
    W1_t = ins[2].detach().t().contiguous().t().requires_grad_()  # same values, strides (1, d)
    assert W1_t.stride(0) == 1
    ins[2] = W1_t
    g = torch.randn(12)
    relu_mlp_head(*ins).backward(g)
    _reference(*ref_ins).backward(g)
    torch.testing.assert_close(W1_t.grad, ref_ins[2].grad)
    assert W1_t.grad.stride() == W1_t.stride()


def test_bf16_autocast_matches_the_unfused_graph_under_autocast():
    """The GPU path: hidden layer in bf16 under autocast, output and every gradient in float32, and
    the same values as autograd's graph with the same precisions (up to bf16 rounding)."""
    ins = _inputs(torch.float32, B=64, d=16, F=48, seed=3)
    ref_ins = [t.detach().clone().requires_grad_() for t in ins]
    x, b, W1, b1, w2, b2 = ref_ins
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = relu_mlp_head(*ins)
        h = torch.relu(torch.addmm(b1, x - b, W1))
        assert h.dtype == torch.bfloat16
        with torch.autocast("cpu", enabled=False):
            ref = h.float() @ w2 + b2
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)  # same bf16 hidden layer
    g = torch.randn(64, generator=torch.Generator().manual_seed(0))
    out.backward(g)
    ref.backward(g)
    for name, a, r in zip(("x", "b", "W1", "b1", "w2", "b2"), ins, ref_ins, strict=True):
        assert a.grad.dtype == torch.float32
        assert (a.grad - r.grad).norm() / r.grad.norm() < 0.02, name
