"""Sparsemax op (closed form + Jacobian) and the sparsemax cross-attention SAE (arXiv 2604.14925)."""

from __future__ import annotations

import pytest
import torch
from builders import gaussian, step_context

from softsae_lib.ops.sparsemax import sparsemax, sparsemax_support, sparsemax_threshold
from softsae_lib.saes import SparsemaxAttentionSAE, make_sae

pytestmark = pytest.mark.usefixtures("single_thread")
D, F = 8, 32


def _bisection_tau(s: torch.Tensor, iters: int = 200) -> torch.Tensor:
    """τ solving Σ_i max(s_i − τ, 0) = 1 per row, by bisection (independent of the sort rule)."""
    lo = s.min(dim=-1, keepdim=True).values - 1.0
    hi = s.max(dim=-1, keepdim=True).values
    for _ in range(iters):
        mid = (lo + hi) / 2
        too_low = (s - mid).clamp_min(0).sum(dim=-1, keepdim=True) > 1  # τ must move up
        lo, hi = torch.where(too_low, mid, lo), torch.where(too_low, hi, mid)
    return (lo + hi) / 2


_ctx = step_context


# ------------------------------------------------------------------------------------- the op


def test_sparsemax_hand_example() -> None:
    s = torch.tensor([[0.5, 0.2, -1.0]], dtype=torch.float64)
    # j=1: 1 + 0.5 > 0.5 ✓; j=2: 1 + 0.4 > 0.7 ✓; j=3: 1 − 3 > −0.3 ✗ → k = 2, τ = (0.7 − 1)/2.
    tau, k = sparsemax_threshold(s)
    assert int(k) == 2 and float(tau) == pytest.approx(-0.15, abs=1e-12)
    torch.testing.assert_close(sparsemax(s), torch.tensor([[0.65, 0.35, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("scale", [0.05, 1.0, 20.0])
@pytest.mark.parametrize("n", [40, 500])  # 500: the top-K window of the threshold search must grow
def test_sparsemax_matches_bisection_and_lies_on_simplex(scale: float, n: int) -> None:
    g = torch.Generator().manual_seed(1)
    s = torch.randn(50, n, generator=g, dtype=torch.float64) * scale
    s[0] *= 1e-3  # one row with (almost) every score in the support
    tau, k = sparsemax_threshold(s)
    torch.testing.assert_close(tau, _bisection_tau(s), atol=1e-10, rtol=0)
    p = sparsemax(s)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(dim=-1), torch.ones(50, dtype=torch.float64))
    if scale == 0.05 and n > 64:
        assert int(k.max()) > 64  # beyond the initial window
    support = sparsemax_support(s)
    assert torch.equal(support, p > 0)
    assert torch.equal(support.sum(dim=-1, keepdim=True), k)
    torch.testing.assert_close(p[support], (s - tau).expand_as(s)[support])


def test_sparsemax_support_size_limits() -> None:
    s = torch.randn(10, 30, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert (sparsemax_threshold(s * 1e3)[1] == 1).all()  # widely spread → argmax
    assert (sparsemax_threshold(s * 1e-4)[1] == 30).all()  # nearly equal → all in the support
    # Ties: two equal maxima share the mass.
    torch.testing.assert_close(sparsemax(torch.tensor([3.0, 3.0, 0.0])), torch.tensor([0.5, 0.5, 0.0]))


def test_sparsemax_gradcheck_and_analytic_jacobian() -> None:
    s = torch.randn(4, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: sparsemax(t), (s,), eps=1e-6, atol=1e-7)
    # J = diag(1_S) − 1_S 1_Sᵀ/|S| for one row.
    row = s[0].detach().clone().requires_grad_(True)
    jac = torch.autograd.functional.jacobian(sparsemax, row)
    sup = sparsemax_support(row).double()
    torch.testing.assert_close(jac, torch.diag(sup) - torch.outer(sup, sup) / sup.sum())


def test_sparsemax_along_other_dim_and_bad_input() -> None:
    s = torch.randn(6, 5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(sparsemax(s, dim=0), sparsemax(s.t(), dim=-1).t())
    with pytest.raises(ValueError, match="NaN"):
        sparsemax(torch.tensor([0.0, float("nan")]))
    with pytest.raises(TypeError, match="floating"):
        sparsemax_threshold(torch.tensor([1, 2]))


# --------------------------------------------------------------------------------- the SAE


def _model(**kw) -> SparsemaxAttentionSAE:
    return make_sae("sparsemax_attention", d_model=D, dict_size=F, normalization="none", **kw)


def _x(n: int = 64, seed: int = 0) -> torch.Tensor:
    return gaussian(n, D, seed)


def test_forward_matches_the_published_formula() -> None:
    m = _model(seed=1)
    x = _x().double()
    m = m.double()
    C, WK, WV = m.concepts.detach(), m.W_K.detach(), m.W_V.detach()
    norm = x.norm(dim=1, keepdim=True)
    s = (x / norm) @ (C @ WK).t()
    tau = _bisection_tau(s)
    support = s > tau
    expected = norm * ((s * support) @ (C @ WV))  # x̂ = ‖x‖ Σ_{i∈S} s_i (C W_V)_i
    z = m.encode(x)
    assert torch.equal(z != 0, support)
    torch.testing.assert_close(z, norm * s * support)
    torch.testing.assert_close(m(x), expected)
    torch.testing.assert_close(m.sparsity(x), support.sum(dim=1).float())
    # The equivalent linear SAE: W_enc = (C W_K)ᵀ, W_dec = C W_V; the base parameters are gone.
    torch.testing.assert_close(m.W_enc, (C @ WK).t())
    torch.testing.assert_close(m.W_dec, C @ WV)
    names = set(m.state_dict())
    assert {"concepts", "W_K", "W_V", "dense_rate"} <= names
    assert not names & {"W_enc", "W_dec", "b_enc", "b_dec"}
    # Official init: Cᵀ kaiming-uniform with fan_in F, so |C| ≤ √(6/F).
    assert C.abs().max() <= (6 / F) ** 0.5 and C.abs().max() > 0.5 * (6 / F) ** 0.5


def test_loss_is_norm_weighted_mse_and_gradient_skips_the_support() -> None:
    m = _model(seed=2)
    x = _x(32) * 3.0
    out = m.loss(x, _ctx())
    norm = x.norm(dim=1, keepdim=True)
    assert out.loss.item() == pytest.approx((10 * ((out.recon - x) ** 2 / norm).mean()).item(), rel=1e-5)
    assert out.terms["l2"] == pytest.approx((out.recon - x).pow(2).sum(1).mean().item(), rel=1e-5)
    out.loss.backward()
    assert m.W_K.grad.abs().sum() > 0 and m.concepts.grad.abs().sum() > 0 and m.W_V.grad.abs().sum() > 0
    # With 'probs' the codes are ‖x‖·sparsemax(s) and the gradient goes through τ.
    p = _model(seed=2, code="probs")
    z = p.encode(x)
    s, _ = p.scores(x)
    torch.testing.assert_close(z, norm * sparsemax(s))


def test_dense_mask_is_a_cumulative_mean_and_silences_latents() -> None:
    m = _model(seed=3, dense_threshold=0.1)
    x = _x(64)
    out1 = m.loss(x, _ctx(step=0))
    m.after_step(out1, _ctx(step=0))
    out2 = m.loss(x[:32], _ctx(step=1))
    m.after_step(out2, _ctx(step=1))
    rate = lambda o: (o.active & (o.pre_acts > 0)).float().mean(0)  # noqa: E731
    torch.testing.assert_close(m.dense_rate, (rate(out1) + rate(out2)) / 2)
    assert int(m.dense_batches) == 2
    with torch.no_grad():
        m.dense_rate.zero_()
        m.dense_rate[:5] = 0.5
    z = m.encode(x)
    assert (z[:, :5] == 0).all() and (m.scores(x)[0][:, :5] == 0).all()
    assert (m.sparsity(x) == (z != 0).sum(dim=1)).all()


def test_support_controller_moves_the_score_scale() -> None:
    m = _model(seed=4, target_support=2.0)
    x = _x(64)
    out = m.loss(x, _ctx())
    assert out.terms["support_mean"] > 2.0  # the initial support is larger than the target
    m.after_step(out, _ctx())
    assert float(m.score_scale) > 1.0
    before = m.sparsity(x).mean()
    with torch.no_grad():
        m.score_scale.fill_(10.0)
    assert m.sparsity(x).mean() < before  # a larger β shrinks the support
