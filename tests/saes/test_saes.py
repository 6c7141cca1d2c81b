"""Tests for the SAE architectures (softsae_lib.saes; docs/sae-variants.md §0–4, §9; docs/method.md §1)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from builders import gaussian, step_context

from softsae_lib.saes import (
    ARCHITECTURES,
    BatchTopKSAE,
    JumpReLUSAE,
    ReLUSAE,
    SoftSAE,
    TopKSAE,
    make_sae,
)
from softsae_lib.saes.auxk import auxk_loss
from softsae_lib.saes.batch_topk import BatchTopKConfig
from softsae_lib.saes.matryoshka import MatryoshkaConfig

D, F, K = 8, 32, 4
ARCH_KW = {
    "soft": {"k": K},
    "topk": {"k": K},
    "batch_topk": {"k": K},
    "jumprelu": {},
    "relu": {},
}
ALL_ARCHS = sorted(ARCH_KW)


pytestmark = pytest.mark.usefixtures("single_thread")


def _make(arch: str, **kw):
    return make_sae(arch, d_model=D, dict_size=F, **{**ARCH_KW[arch], **kw})


def _x(n: int = 64, d: int = D, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return gaussian(n, d, seed, scale)


_ctx = functools.partial(step_context, k=K, total=10)


# ---------------------------------------------------------------------------------------- registry


def test_registry_has_all_five_architectures() -> None:
    assert {"soft", "topk", "batch_topk", "jumprelu", "relu"} <= set(ARCHITECTURES)  # + the adaptive ones
    assert isinstance(_make("soft"), SoftSAE)
    assert isinstance(_make("topk"), TopKSAE)
    assert isinstance(_make("batch_topk"), BatchTopKSAE)
    assert isinstance(_make("jumprelu"), JumpReLUSAE)
    assert isinstance(_make("relu"), ReLUSAE)
    with pytest.raises(ValueError, match="unknown SAE architecture 'nope'"):
        make_sae("nope", d_model=D, dict_size=F)


@pytest.mark.parametrize("arch", ["soft", "topk", "batch_topk"])
def test_k_out_of_range_rejected(arch: str) -> None:
    with pytest.raises(ValueError, match="k must be in"):
        make_sae(arch, d_model=D, dict_size=F, k=F + 1)
    with pytest.raises(ValueError, match="k must be in"):
        make_sae(arch, d_model=D, dict_size=F, k=0)


def test_bad_normalization_rejected() -> None:
    with pytest.raises(ValueError, match="normalization"):
        _make("topk", normalization="zscore")


# ------------------------------------------------------------------------------------ initialisation


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_init_deterministic_from_seed_and_independent_of_global_rng(arch: str) -> None:
    torch.manual_seed(123)
    a = _make(arch, seed=5)
    torch.manual_seed(999)
    torch.rand(1000)  # move the global RNG further
    b = _make(arch, seed=5)
    c = _make(arch, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
    assert not torch.equal(sa["W_dec"], sc["W_dec"])
    # Construction must not consume the global RNG either.
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    _make(arch, seed=5)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_tied_init_and_decoder_norms(arch: str) -> None:
    m = _make(arch, seed=3)
    assert m.W_enc.shape == (D, F) and m.W_dec.shape == (F, D)
    scale = 0.1 if arch == "batch_topk" else 1.0  # BatchTopKConfig.encoder_init_scale
    assert m.config.encoder_init_scale == scale
    torch.testing.assert_close(m.W_enc.detach(), scale * m.W_dec.detach().t(), atol=0, rtol=0)
    assert m.W_enc.data_ptr() != m.W_dec.data_ptr()  # tied only at init
    assert torch.count_nonzero(m.b_enc) == 0 and torch.count_nonzero(m.b_dec) == 0
    expected_norm = 0.1 if arch == "relu" else 1.0
    torch.testing.assert_close(m.W_dec.norm(dim=1), torch.full((F,), expected_norm), atol=1e-6, rtol=0)
    # Atoms are not all the same direction (a real random init).
    cos = (m.W_dec / m.W_dec.norm(dim=1, keepdim=True)) @ (m.W_dec / m.W_dec.norm(dim=1, keepdim=True)).t()
    assert (cos - torch.eye(F)).abs().max() < 0.999


def test_encoder_init_scale_config_and_migration() -> None:
    m = _make("topk", seed=3, encoder_init_scale=0.5)
    torch.testing.assert_close(m.W_enc.detach(), 0.5 * m.W_dec.detach().t(), atol=0, rtol=0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="encoder_init_scale"):
            _make("topk", encoder_init_scale=bad)
    # A BatchTopK config saved before the field existed was initialised exactly tied.
    assert BatchTopKConfig.migrate({"d_model": D, "dict_size": F, "k": K})["encoder_init_scale"] == 1.0
    assert BatchTopKConfig.migrate({"encoder_init_scale": 0.1})["encoder_init_scale"] == 0.1
    assert MatryoshkaConfig(d_model=D, dict_size=F, k=K).encoder_init_scale == 1.0


def test_soft_k_estimator_first_layer_is_a_separate_copy_of_w_enc() -> None:
    m = _make("soft", seed=1)
    assert torch.equal(m.k_est_W1.detach(), m.W_enc.detach())
    assert m.k_est_W1 is not m.W_enc
    assert m.k_est_W1.data_ptr() != m.W_enc.data_ptr()
    assert torch.count_nonzero(m.k_est_b1) == 0
    params = dict(m.named_parameters())
    for name in ("k_est_W1", "k_est_b1", "k_est_w2", "k_est_b2"):
        assert name in params
    assert {id(p) for p in m.k_estimator_parameters()} == {
        id(params[n]) for n in ("k_est_W1", "k_est_b1", "k_est_w2", "k_est_b2")}
    with torch.no_grad():
        m.W_enc.add_(1.0)
    assert not torch.equal(m.k_est_W1.detach(), m.W_enc.detach())
    # Second layer: nn.Linear(F, 1) default bound 1/sqrt(F), not all zero.
    bound = 1 / math.sqrt(F)
    assert m.k_est_w2.abs().max() <= bound and m.k_est_w2.abs().max() > 0


# ----------------------------------------------------------------------------- decoder constraints


@pytest.mark.parametrize("arch", [a for a in ALL_ARCHS if a != "relu"])
def test_remove_parallel_decoder_grad_leaves_grads_orthogonal(arch: str) -> None:
    m = _make(arch, seed=2)
    with torch.no_grad():  # non-unit rows, to check the projection uses the direction only
        m.W_dec.mul_(torch.linspace(0.5, 3.0, F).unsqueeze(1))
    g0 = torch.randn(F, D, generator=torch.Generator().manual_seed(0))
    m.W_dec.grad = g0.clone()
    m.remove_parallel_decoder_grad()
    unit = m.W_dec / m.W_dec.norm(dim=1, keepdim=True)
    g = m.W_dec.grad
    assert (g * unit).sum(dim=1).abs().max() < 1e-5
    # Only the parallel component is removed: the orthogonal part of g0 is unchanged.
    ortho = g0 - (g0 * unit).sum(dim=1, keepdim=True) * unit
    torch.testing.assert_close(g, ortho, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(g, g0)


def test_relu_decoder_is_unconstrained() -> None:
    m = _make("relu", seed=2)
    g0 = torch.randn(F, D)
    m.W_dec.grad = g0.clone()
    m.remove_parallel_decoder_grad()
    assert torch.equal(m.W_dec.grad, g0)
    before = m.W_dec.detach().clone()
    m.normalize_decoder()
    assert torch.equal(m.W_dec.detach(), before)


@pytest.mark.parametrize("arch", [a for a in ALL_ARCHS if a != "relu"])
def test_normalize_decoder_gives_unit_rows_same_directions(arch: str) -> None:
    m = _make(arch, seed=4)
    with torch.no_grad():
        m.W_dec.mul_(torch.linspace(0.1, 5.0, F).unsqueeze(1))
    direction = m.W_dec.detach() / m.W_dec.detach().norm(dim=1, keepdim=True)
    m.normalize_decoder()
    torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(F), atol=1e-6, rtol=0)
    torch.testing.assert_close(m.W_dec.detach(), direction, atol=1e-6, rtol=0)


# -------------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("mode", ["scale", "scale_shift", "none"])
def test_normalisation_fit_and_round_trip(mode: str) -> None:
    m = _make("topk", normalization=mode)
    assert bool(m.norm_fitted) == (mode == "none")
    x = _x(500, scale=3.0) + torch.arange(D, dtype=torch.float32)  # non-zero mean, large scale
    m.fit_normalization(x)
    assert bool(m.norm_fitted)
    x_n = m.normalize(x)
    torch.testing.assert_close(m.denormalize(x_n), x, atol=1e-5, rtol=1e-5)
    if mode == "none":
        assert torch.equal(x_n, x)
        return
    assert x_n.pow(2).sum(dim=-1).mean().item() == pytest.approx(1.0, rel=1e-5)
    if mode == "scale_shift":
        assert x_n.mean(dim=0).abs().max() < 1e-5
        torch.testing.assert_close(m.norm_shift, x.mean(dim=0), atol=1e-5, rtol=1e-5)
    else:
        assert torch.count_nonzero(m.norm_shift) == 0
        assert x_n.mean(dim=0).abs().max() > 0.1  # the mean is kept


def test_fit_normalization_rejects_zero_data() -> None:
    m = _make("topk")
    with pytest.raises(ValueError, match="cannot fit normalisation"):
        m.fit_normalization(torch.zeros(10, D))


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_forward_is_in_raw_space(arch: str) -> None:
    """Scaling the data and the normalisation together scales the reconstruction."""
    m = _make(arch, seed=1)
    if arch == "batch_topk":
        m.threshold.fill_(0.05)
    x = _x(32)
    m.fit_normalization(x)
    out1 = m(x)
    with torch.no_grad():
        m.norm_scale.mul_(10.0)
    torch.testing.assert_close(m(10.0 * x), 10.0 * out1, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="expects x of shape"):
        m(torch.zeros(3, D + 1))


# ------------------------------------------------------------------------------------------- TopK


def test_topk_encode_exactly_k_per_row() -> None:
    m = _make("topk", normalization="none", seed=0)
    with torch.no_grad():
        m.b_enc.fill_(5.0)  # every pre-activation positive
    x = _x(50)
    r = torch.relu(m.pre_activations(x))
    assert (r > 0).all()
    z = m.encode(x)
    assert ((z != 0).sum(dim=-1) == K).all()
    # The kept entries are the k largest, with their values.
    top = r.topk(K, dim=-1)
    assert torch.equal(torch.gather(z, 1, top.indices), top.values)
    # With fewer than k positive pre-activations the row has fewer nonzeros (ReLU then top-k).
    with torch.no_grad():
        m.b_enc.fill_(-100.0)
        m.b_enc[:2] = 100.0
    assert ((m.encode(x) != 0).sum(dim=-1) == 2).all()


def test_topk_training_loss_uses_annealed_k() -> None:
    m = _make("topk", normalization="none")
    with torch.no_grad():
        m.b_enc.fill_(5.0)
    out = m.loss(_x(16), _ctx(k=7))
    assert int(out.n_fired) == 16 * 7  # at most 7 per row, so exactly 7 in every row
    assert out.terms["l2"] == pytest.approx(out.loss.item())


# ------------------------------------------------------------------------------------------ SoftSAE


def test_soft_k_hat_in_range_and_at_bounds() -> None:
    m = _make("soft", normalization="none", k=K)
    x = _x(200, scale=5.0)
    k_hat = m.predict_k(x)
    assert k_hat.shape == (200,) and k_hat.dtype == torch.float32
    assert (k_hat >= 1).all() and (k_hat <= 2 * K).all()
    with torch.no_grad():
        m.k_est_b2.fill_(100.0)
    torch.testing.assert_close(m.predict_k(x), torch.full((200,), 2.0 * K))
    with torch.no_grad():
        m.k_est_b2.fill_(-100.0)
    torch.testing.assert_close(m.predict_k(x), torch.ones(200))
    # k_max beyond F is clamped to F.
    big = make_sae("soft", d_model=D, dict_size=F, k=K, k_max=10 * F, normalization="none")
    with torch.no_grad():
        big.k_est_b2.fill_(100.0)
    torch.testing.assert_close(big.predict_k(x), torch.full((200,), float(F)))


def test_soft_inference_l0_is_floor_of_k_hat() -> None:
    m = _make("soft", normalization="none", k=8, seed=3)
    with torch.no_grad():
        m.b_enc.fill_(10.0)  # all pre-activations positive
        m.k_est_w2.mul_(20.0)  # spread k̂ over its range
    x = _x(300)
    k_hat = m.predict_k(x)
    assert k_hat.max() - k_hat.min() > 3  # a real spread, including fractional values
    assert (k_hat != k_hat.floor()).any()
    z = m.encode(x)
    l0 = (z != 0).sum(dim=-1)
    assert torch.equal(l0, k_hat.floor().long())
    torch.testing.assert_close(m.sparsity(x), k_hat.floor())


def test_soft_hard_phase_freezes_k_estimator() -> None:
    m = _make("soft", normalization="none", seed=1)
    out = m.loss(_x(32), _ctx(hard=True))
    out.loss.backward()
    for p in m.k_estimator_parameters():
        assert p.grad is None
    assert out.terms["k_loss"] == 0.0
    assert m.W_enc.grad is not None and m.W_enc.grad.abs().sum() > 0
    # Hard phase: exactly ⌊k̂⌋ selected per row when enough positive pre-activations.
    with torch.no_grad():
        m.b_enc.fill_(10.0)
    x = _x(32)
    out = m.loss(x, _ctx(hard=True))
    assert torch.equal(out.active.sum(dim=-1), m.predict_k(x).floor().long())


def test_soft_soft_phase_trains_k_estimator() -> None:
    m = _make("soft", normalization="none", seed=1)
    with torch.no_grad():
        m.k_est_b2.fill_(3.0)  # mean k̂ well above k → positive budget loss
    x = _x(32)
    out = m.loss(x, _ctx(k=K, alpha=0.05))
    out.loss.backward()
    for p in m.k_estimator_parameters():
        assert p.grad is not None
        assert torch.isfinite(p.grad).all()
    assert m.k_est_b2.grad.abs() > 0 and m.k_est_w2.grad.abs().sum() > 0
    assert m.k_est_W1.grad.abs().sum() > 0
    k_mean = m.predict_k(x).mean().item()
    assert k_mean > K
    expected_k_loss = torch.nn.functional.softplus(torch.tensor(k_mean - K), beta=5.0).item()
    assert out.terms["k_loss"] == pytest.approx(expected_k_loss, rel=1e-4)
    assert out.loss.item() == pytest.approx(out.terms["l2"] + expected_k_loss, rel=1e-4)
    # The soft mask sums to k̂ per row, so the code is a soft selection of about k̂ latents.
    assert out.recon.shape == x.shape and out.pre_acts.shape == (32, F)


def test_soft_phase_fired_latents_are_the_inference_selection() -> None:
    """Dead tracking and the logged L0 count what inference would select: top-⌊k̂⌋ of r, r > 0."""
    from softsae_lib.ops import topk_mask

    m = _make("soft", normalization="none", seed=3)
    x = _x(48)
    for b_enc in (0.0, -0.6):  # -0.6: many rows have fewer than ⌊k̂⌋ positive pre-activations
        with torch.no_grad():
            m.b_enc.fill_(b_enc)
        out = m.loss(x, _ctx(k=K, alpha=0.05))
        with torch.no_grad():
            r = out.pre_acts
            selected = topk_mask(r, m.predict_k(x)) & (r > 0)
        assert out.active is None
        assert torch.equal(out.fired, selected.any(dim=0))
        assert int(out.n_fired) == int(selected.sum())
    assert (selected.sum(dim=1) < m.predict_k(x).floor()).any()  # the r > 0 condition was exercised


def test_soft_k_hat_float32_under_bf16_autocast() -> None:
    m = _make("soft", normalization="none", k=K, seed=2)
    with torch.no_grad():
        m.k_est_w2.mul_(10.0)
    x = _x(256)
    ref = m.predict_k(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        k_hat = m.predict_k(x)
        out = m.loss(m.normalize(x), _ctx(alpha=0.05))
    assert k_hat.dtype == torch.float32
    # Not quantised to the bf16 grid (the official code's k̂ would be).
    assert (k_hat.bfloat16().float() != k_hat).float().mean() > 0.5
    torch.testing.assert_close(k_hat, ref, atol=0.2, rtol=0.05)  # hidden layer runs in bf16
    assert math.isfinite(out.loss.float().item())


def test_soft_k_loss_zero_ish_below_target() -> None:
    m = _make("soft", normalization="none", seed=1)
    with torch.no_grad():
        m.k_est_b2.fill_(-50.0)  # k̂ = 1 everywhere
    out = m.loss(_x(16), _ctx(k=K))
    expected = torch.nn.functional.softplus(torch.tensor(1.0 - K), beta=5.0).item()
    assert out.terms["k_loss"] == pytest.approx(expected, rel=1e-4)
    assert out.terms["k_hat_mean"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------- BatchTopK


def test_batch_topk_training_keeps_k_times_b() -> None:
    m = _make("batch_topk", normalization="none", seed=0)
    with torch.no_grad():
        m.b_enc.fill_(5.0)
    x = _x(40)
    out = m.loss(x, _ctx(k=K))
    assert int(out.active.sum()) == K * 40
    per_row = out.active.sum(dim=-1)
    assert per_row.float().std() > 0  # the budget is shared across the batch, not per row
    # What is kept are the k·B largest pre-activations of the batch.
    r = out.pre_acts
    kept_min = r[out.active].min()
    dropped_max = r[~out.active].max()
    assert kept_min >= dropped_max


def test_batch_topk_inference_needs_threshold() -> None:
    m = _make("batch_topk", normalization="none", seed=0)
    with pytest.raises(RuntimeError, match="threshold"):
        m.encode(_x(4))


def test_batch_topk_calibrate_threshold_then_inference() -> None:
    m = _make("batch_topk", normalization="none", seed=0)
    batches = [_x(32, seed=s) for s in range(3)]
    theta = m.calibrate_threshold(batches)
    mins = []
    for x in batches:
        r = torch.relu(m.pre_activations(x))
        cut = r.flatten().topk(K * 32).values.min()
        mins.append(cut)
    assert theta == pytest.approx(torch.stack(mins).mean().item(), rel=1e-6)
    assert float(m.threshold) == pytest.approx(theta)
    x = _x(50, seed=10)
    r = torch.relu(m.pre_activations(x))
    z = m.encode(x)
    assert torch.equal(z, r * (r > theta))
    assert ((z > 0) == (r > theta)).all()
    assert 0 < (z != 0).sum() < z.numel()
    # Calibrated on one batch, θ is that batch's smallest kept activation, which r > θ then drops.
    theta1 = m.calibrate_threshold(batches[:1])
    r0 = torch.relu(m.pre_activations(batches[0]))
    assert (r0 == theta1).sum() == 1
    assert int((m.encode(batches[0]) != 0).sum()) == K * 32 - 1


def test_batch_topk_threshold_ema_after_start_step() -> None:
    m = make_sae("batch_topk", d_model=D, dict_size=F, k=K, normalization="none",
                 threshold_start_step=2, threshold_beta=0.5)
    x1, x2 = _x(16, seed=1), _x(16, seed=2)
    out = m.loss(x1, _ctx(step=1))
    m.after_step(out, _ctx(step=1))
    assert float(m.threshold) < 0  # before the start step
    out1 = m.loss(x1, _ctx(step=2))
    m.after_step(out1, _ctx(step=2))
    m1 = out1.pre_acts[out1.active].min().item()
    assert float(m.threshold) == pytest.approx(m1)
    out2 = m.loss(x2, _ctx(step=3))
    m.after_step(out2, _ctx(step=3))
    m2 = out2.pre_acts[out2.active].min().item()
    assert float(m.threshold) == pytest.approx(0.5 * m1 + 0.5 * m2)


# ----------------------------------------------------------------------------------------- JumpReLU


def _tiny_jumprelu(eps: float, lam: float) -> JumpReLUSAE:
    m = make_sae("jumprelu", d_model=3, dict_size=3, normalization="none", bandwidth=eps,
                 sparsity_coeff=lam, threshold_init=1.0).double()
    with torch.no_grad():
        m.W_enc.copy_(torch.eye(3, dtype=torch.float64))
        m.W_dec.copy_(torch.tensor([[1.0, 0, 0], [0, 0.6, 0.8], [0, 0.8, -0.6]], dtype=torch.float64))
        m.b_enc.zero_()
        m.b_dec.copy_(torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64))
        m.log_threshold.copy_(torch.log(torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)))
    return m


def test_jumprelu_straight_through_matches_hand_computation() -> None:
    eps, lam = 0.2, 0.3
    m = _tiny_jumprelu(eps, lam)
    # z = x (identity encoder, no pre-encoder bias). θ = [1, 0.5, 2].
    x = torch.tensor([[1.05, 0.3, 1.0],     # z0 within ε/2 of θ0 (above); z1 below θ1 out of window
                      [0.95, 0.58, 3.0],    # z0 within window (below θ0); z1 within window (above)
                      [2.0, 0.45, 2.5]], dtype=torch.float64)  # z1 within window (below)
    out = m.loss(x, _ctx(sparsity_scale=1.0))
    out.loss.backward()

    theta = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    z = x
    f = z * (z > theta)
    W_dec, b_dec = m.W_dec.detach(), m.b_dec.detach()
    recon = f @ W_dec + b_dec
    B = x.shape[0]
    g = (2.0 / B) * (recon - x) @ W_dec.t()  # dl2/df
    K = ((z - theta).abs() / eps < 0.5).double()
    dl2_dtheta = (-(theta / eps) * K * g).sum(dim=0)
    dl0_dtheta = (-(1.0 / eps) * K).sum(dim=0) / B
    expected = theta * (dl2_dtheta + lam * dl0_dtheta)  # chain rule through θ = exp(log θ)
    torch.testing.assert_close(m.log_threshold.grad, expected, atol=1e-12, rtol=1e-10)
    # Latent 2 has no pre-activation within ε/2 of θ: no gradient at all reaches its threshold.
    assert K[:, 2].sum() == 0 and m.log_threshold.grad[2] == 0
    assert m.log_threshold.grad[0] != 0 and m.log_threshold.grad[1] != 0
    # Loss value: l2 + λ·L0.
    l2 = (x - recon).pow(2).sum(dim=-1).mean()
    l0 = (z > theta).double().sum(dim=-1).mean()
    assert out.loss.item() == pytest.approx((l2 + lam * l0).item(), rel=1e-12)
    # ∂f/∂z = H(z − θ): encoder gradient only from active entries (the L0 term sends none).
    g_w = m.W_enc.grad
    expected_wenc = x.t() @ (g * (z > theta))
    torch.testing.assert_close(g_w, expected_wenc, atol=1e-12, rtol=1e-10)


def test_jumprelu_no_kernel_no_threshold_gradient() -> None:
    m = _tiny_jumprelu(eps=1e-3, lam=0.5)
    x = torch.tensor([[3.0, 3.0, 3.0], [0.1, 0.1, 0.1]], dtype=torch.float64)  # far from all θ
    m.loss(x, _ctx()).loss.backward()
    assert torch.count_nonzero(m.log_threshold.grad) == 0


def test_jumprelu_codes_zero_below_threshold() -> None:
    m = _make("jumprelu", normalization="none", threshold_init=0.5, seed=0)
    x = _x(100)
    z_pre = m.pre_activations(x)
    codes = m.encode(x)
    theta = m.log_threshold.exp()
    assert (codes[z_pre <= theta] == 0).all()
    torch.testing.assert_close(codes[z_pre > theta], z_pre[z_pre > theta])
    assert (z_pre > 0).any() and (z_pre[z_pre > 0] < 0.5).any()  # some positive but sub-threshold


def test_jumprelu_target_l0_controller() -> None:
    m = _make("jumprelu", normalization="none", target_l0=2.0, sparsity_coeff=0.1, threshold_init=0.2)
    x = _x(20)
    out = m.loss(x, _ctx(sparsity_scale=0.5))
    l0 = (m.pre_activations(x) > 0.2).float().sum(dim=-1).mean().item()
    assert out.terms["l0_penalty"] == pytest.approx((l0 / 2.0 - 1) ** 2, rel=1e-5)
    assert out.loss.item() == pytest.approx(out.terms["l2"] + 0.1 * 0.5 * (l0 / 2.0 - 1) ** 2, rel=1e-5)


# --------------------------------------------------------------------------------------------- ReLU


def test_relu_l1_weighted_by_decoder_norms() -> None:
    m = _make("relu", normalization="none", l1_coeff=2.0, seed=0)
    x = _x(16)
    with torch.no_grad():
        m.W_dec.mul_(torch.linspace(0.5, 4.0, F).unsqueeze(1))
    f = torch.relu(x @ m.W_enc + m.b_enc)
    out = m.loss(x, _ctx(sparsity_scale=0.25))
    l1 = (f * m.W_dec.norm(dim=1)).sum(dim=-1).mean().item()
    assert out.terms["l1"] == pytest.approx(l1, rel=1e-5)
    assert out.terms["l1"] != pytest.approx(f.sum(dim=-1).mean().item(), rel=1e-2)
    assert out.loss.item() == pytest.approx(out.terms["l2"] + 2.0 * 0.25 * l1, rel=1e-5)
    # The L1 term sends gradient to the decoder norms.
    m.zero_grad()
    out = m.loss(x, _ctx())
    (out.loss - m.recon_loss(x, out.recon)).backward()
    assert m.W_dec.grad.abs().sum() > 0


def test_relu_fold_decoder_norms_keeps_output() -> None:
    m = _make("relu", normalization="scale", seed=0)
    x = _x(40, scale=2.0)
    m.fit_normalization(x)
    with torch.no_grad():
        m.W_dec.mul_(torch.linspace(0.2, 3.0, F).unsqueeze(1))
        m.b_enc.copy_(torch.linspace(-0.1, 0.1, F))
    before = m(x).detach()
    z_before = m.encode(x).detach()
    norms = m.W_dec.norm(dim=1).detach()
    m.fold_decoder_norms()
    torch.testing.assert_close(m(x).detach(), before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(F), atol=1e-6, rtol=0)
    torch.testing.assert_close(m.encode(x).detach(), z_before * norms, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------- AuxK


def test_auxk_zero_without_dead_latents() -> None:
    pre = torch.rand(4, 6)
    res = torch.randn(4, 3)
    W = torch.randn(6, 3)
    assert auxk_loss(pre, res, torch.zeros(6, dtype=torch.bool), W, k_aux=2).item() == 0.0


def test_auxk_hand_computation() -> None:
    pre = torch.tensor([[0.5, 2.0, 0.1, 0.7],
                        [0.0, 1.0, 0.9, 0.3],
                        [0.2, 0.0, 0.0, 0.4]], dtype=torch.float64)
    dead = torch.tensor([False, True, True, True])
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    e = torch.tensor([[1.0, 2.0], [0.5, -1.0], [-0.3, 0.4]], dtype=torch.float64)
    # k_aux = 1: per row the largest dead pre-activation (latent 0 is alive and ignored).
    # row 0: latent 1 (2.0) → ê = [0, 2]; row 1: latent 1 (1.0) → [0, 1]; row 2: latent 3 (0.4) → [.4, -.4]
    e_hat = torch.tensor([[0.0, 2.0], [0.0, 1.0], [0.4, -0.4]], dtype=torch.float64)
    num = (e - e_hat).pow(2).sum(-1).mean()
    den = (e - e.mean(0)).pow(2).sum(-1).mean()
    got = auxk_loss(pre, e, dead, W, k_aux=1)
    assert got.item() == pytest.approx((num / den).item(), rel=1e-12)
    assert got.item() > 0
    # k_aux = 2: rows use their two largest dead latents.
    e_hat2 = torch.tensor([[2.0 * 0 + 0.7 * 1, 2.0 * 1 + 0.7 * -1],      # latents 1 (2.0), 3 (0.7)
                           [0.9, 1.0 + 0.9],                             # latents 1 (1.0), 2 (0.9)
                           [0.4, -0.4]], dtype=torch.float64)             # latent 3 (0.4), then a 0
    num2 = (e - e_hat2).pow(2).sum(-1).mean()
    assert auxk_loss(pre, e, dead, W, k_aux=2).item() == pytest.approx((num2 / den).item(), rel=1e-12)
    # k_aux is capped at the number of dead latents.
    assert auxk_loss(pre, e, dead, W, k_aux=50).item() == pytest.approx(
        auxk_loss(pre, e, dead, W, k_aux=3).item(), rel=1e-12)


def test_auxk_stops_gradient_on_residual_and_trains_dead_latents() -> None:
    pre = torch.rand(5, 4, dtype=torch.float64, requires_grad=True)
    e = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    W = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    dead = torch.tensor([True, False, True, False])
    auxk_loss(pre, e, dead, W, k_aux=1).backward()
    assert e.grad is None
    assert pre.grad[:, [1, 3]].abs().sum() == 0 and pre.grad[:, [0, 2]].abs().sum() > 0
    assert W.grad[[1, 3]].abs().sum() == 0 and W.grad[[0, 2]].abs().sum() > 0


def test_auxk_positive_with_dead_latents_in_a_model() -> None:
    m = _make("topk", normalization="none")
    x = _x(32)
    out = m.loss(x, _ctx())
    dead = torch.zeros(F, dtype=torch.bool)
    dead[: F // 2] = True
    aux = auxk_loss(out.pre_acts, x - out.recon, dead, m.W_dec, k_aux=D // 2)
    assert aux.item() > 0 and math.isfinite(aux.item())


def test_softsae_official_fired_rule_counts_every_positive_gated_latent():
    from softsae_lib.training import TrainConfig

    x = gaussian(64, 8, seed=3)
    ours = make_sae("soft", d_model=8, dict_size=32, k=4, seed=0, alpha=0.5)
    official = make_sae("soft", d_model=8, dict_size=32, k=4, seed=0, alpha=0.5, fired_rule="soft_positive")
    ctx = ours.step_context(0, TrainConfig(steps=10))
    a, b = ours.loss(ours.normalize(x), ctx), official.loss(official.normalize(x), ctx)
    assert torch.equal(a.recon, b.recon)  # the rule changes only what counts as a firing
    # at a broad α, r·p > 0 marks (almost) every positive activation: more than the hard top-⌊k̂⌋
    assert int(b.n_fired) > int(a.n_fired) and bool((b.fired | ~a.fired).all())
    assert int(b.n_fired) == int((a.pre_acts > 0).sum())
    with pytest.raises(ValueError, match="fired_rule"):
        make_sae("soft", d_model=8, dict_size=32, k=4, fired_rule="p > 1/2")
