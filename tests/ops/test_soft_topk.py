"""Tests for the LapSum soft top-k ``softsae_lib.ops.soft_topk`` (``docs/method.md`` §2).

The forward pass is checked against an independent float64 bisection for the threshold t of
Σ_j F((x_j − t)/α) = k (F = standard Laplace CDF), and the backward pass against the
implicit-differentiation formulas of §2.4 evaluated at that reference t, plus ``gradcheck``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from softsae_lib.ops import soft_topk, soft_topk_gate, topk_mask, window_size

F64 = torch.float64
ALPHAS = [1.0, 1e-1, 1e-2, 1e-4]
DISTS = ["randn", "relu", "tied"]


# ---------------------------------------------------------------------------------------------
# Independent float64 reference
# ---------------------------------------------------------------------------------------------


def _laplace_cdf(u: np.ndarray) -> np.ndarray:
    """Standard Laplace CDF, two-branch form."""
    e = 0.5 * np.exp(-np.abs(u))
    return np.where(u <= 0, e, 1.0 - e)


def reference_threshold(x: torch.Tensor, k: torch.Tensor, alpha: float, iters: int = 200) -> np.ndarray:
    """t per row of x (B, n) with Σ_j F((x_j − t)/α) = k_b, by plain bisection in float64 numpy."""
    x = x.detach().to(F64).numpy()
    k = k.detach().to(F64).numpy().reshape(-1)
    # Φ(min − 60α) ≥ n(1 − ½e^{−60}) and Φ(max + 60α) ≤ ½ n e^{−60}: the root is bracketed for
    # every k used here (≥ 1e-3 away from 0 and n).
    lo = x.min(axis=1) - 60 * alpha
    hi = x.max(axis=1) + 60 * alpha
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        # Φ(t) − k = (#{x_j > t} − k) − ½Σ_{x_j>t} e^{−(x_j−t)/α} + ½Σ_{x_j≤t} e^{−(t−x_j)/α}: the
        # integer count is split off so that Φ − k keeps full relative accuracy when it is tiny
        # (summing F directly loses ~n·eps, which at an integer k in the hard limit moves t by
        # up to ~α, since there Φ is nearly flat).
        u = (x - mid[:, None]) / alpha
        above_t = u > 0
        e = 0.5 * np.exp(-np.abs(u))
        g = (above_t.sum(axis=1) - k) - np.where(above_t, e, 0.0).sum(axis=1) \
            + np.where(above_t, 0.0, e).sum(axis=1)
        above = g > 0  # too much mass: the threshold must move up
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    return 0.5 * (lo + hi)


def reference_p(x: torch.Tensor, k: torch.Tensor, alpha: float) -> torch.Tensor:
    t = reference_threshold(x, k, alpha)
    return torch.from_numpy(_laplace_cdf((x.detach().to(F64).numpy() - t[:, None]) / alpha))


def reference_grads(x: torch.Tensor, k: torch.Tensor, alpha: float, v: torch.Tensor):
    """(grad_x, grad_x's rounding scale, grad_k, grad_α, grad_α's rounding scale, S) from §2.4 at the
    bisection t."""
    t = reference_threshold(x, k, alpha)
    x = x.detach().to(F64).numpy()
    v = v.detach().to(F64).numpy()
    xc = x - t[:, None]
    q = 0.5 * np.exp(-np.abs(xc) / alpha) / alpha
    S = q.sum(axis=1)
    pos = S > 0
    S1 = np.where(pos, S, 1.0)
    vbar = np.where(pos, (q * v).sum(axis=1) / S1, 0.0)
    xbar_c = np.where(pos, (q * xc).sum(axis=1) / S1, 0.0)
    gx = q * (v - vbar[:, None])
    # Size of the terms that cancel in grad_x = q(v − v̄), entry by entry: when one entry carries
    # nearly all of S (x_j ≈ t at small α), v̄ ≈ v_j and its gradient is rounding of a q·|v| ~ 1/α
    # product (an ulp of t moves it by ~1e-12 at α = 1e-4, and which ulp depends on the CPU's exp).
    gx_scale = (q * (np.abs(v) + np.abs(vbar)[:, None])).max()
    ga = -(q * v * (xc - xbar_c[:, None])).sum() / alpha
    # Size of the sums that cancel in grad_α (it is ~0 when q sits on one tie block): the
    # rounding floor against which grad_α can be compared.
    ga_scale = (q * np.abs(v) * (np.abs(xc) + np.abs(xbar_c)[:, None])).sum() / alpha
    as_t = torch.from_numpy
    return as_t(gx), float(gx_scale), as_t(vbar), torch.tensor(ga), torch.tensor(ga_scale), as_t(S)


def make_x(dist: str, B: int, n: int, gen: torch.Generator) -> torch.Tensor:
    if dist == "randn":
        return torch.randn(B, n, generator=gen, dtype=F64)
    if dist == "relu":
        return torch.randn(B, n, generator=gen, dtype=F64).clamp_min(0)
    if dist == "tied":
        x = torch.randint(0, 5, (B, n), generator=gen).to(F64)
        x[0] = 1.5  # rows where every value is equal
        x[7] = -0.25
        return x
    raise AssertionError(dist)


def make_k(kind: str, B: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """Per-row fractional budgets, with special rows first (integer, k < 1, k near n)."""
    if kind == "window":  # small budgets: window_size(k_max, n) < n, the top-K window path
        special = [64.0, 1.0, 0.3, 1e-3, 2.0, 17.5]
        rest = torch.rand(B - len(special), generator=gen, dtype=F64) * 40 + 0.05
    else:  # budgets near n: the window is the whole row (full sort)
        special = [n - 0.5, n - 1e-3, n - 1.0, n / 2, 200.0, 0.7]
        rest = torch.rand(B - len(special), generator=gen, dtype=F64) * (n - 1) + 0.5
    return torch.cat([torch.tensor(special, dtype=F64), rest]).reshape(B, 1)


def gen_for(*key) -> torch.Generator:
    """A generator seeded deterministically from the test's parameters (not Python's salted hash)."""
    seed = 0
    for ch in repr(key):
        seed = (seed * 131 + ord(ch)) % (2**31 - 1)
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Forward against the bisection reference
# ---------------------------------------------------------------------------------------------

N_REF = 256
B_REF = 12


@pytest.mark.parametrize("kind", ["window", "full"])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dist", DISTS)
def test_forward_matches_bisection_reference(dist, alpha, kind):
    gen = gen_for("fwd", dist, alpha, kind)
    x = make_x(dist, B_REF, N_REF, gen)
    k = make_k(kind, B_REF, N_REF, gen)
    K = window_size(float(k.max()), N_REF)
    assert (K < N_REF) if kind == "window" else (K == N_REF)

    p = soft_topk(x, k, alpha)
    assert p.dtype == F64 and p.shape == x.shape
    assert torch.all((p >= 0) & (p <= 1))
    # Σp = k in float64, row by row.
    assert (p.sum(dim=1) - k[:, 0]).abs().max().item() <= 1e-6

    p_ref = reference_p(x, k, alpha)
    assert (p_ref.sum(dim=1) - k[:, 0]).abs().max().item() <= 1e-6  # the reference itself is sound
    err = (p - p_ref).abs().max().item()
    assert err <= 1e-8, f"max |p − p_ref| = {err:.3e}"


@pytest.mark.parametrize("kind", ["window", "full"])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dist", DISTS)
def test_backward_matches_reference_formulas(dist, alpha, kind):
    """grad_x, grad_k and grad_α agree with §2.4 evaluated at the reference threshold."""
    gen = gen_for("bwd", dist, alpha, kind)
    x0 = make_x(dist, B_REF, N_REF, gen)
    k0 = make_k(kind, B_REF, N_REF, gen)
    v = torch.randn(B_REF, N_REF, generator=gen, dtype=F64)
    x = x0.clone().requires_grad_()
    k = k0.clone().requires_grad_()
    a = torch.tensor(alpha, dtype=F64, requires_grad=True)
    soft_topk(x, k, a).backward(v)

    gx, gx_scale, gk, ga, ga_scale, S = reference_grads(x0, k0, alpha, v)
    assert torch.isfinite(x.grad).all() and torch.isfinite(k.grad).all() and torch.isfinite(a.grad)
    scale_x = gx.abs().max().item() + 1e-300
    assert (x.grad - gx).abs().max().item() <= 1e-6 * scale_x + 1e-13 * gx_scale
    # grad_k = v̄ is a q-weighted mean of v: compare absolutely (|v| ~ 1), row by row. Where every
    # q underflows (an integer k between values ≳ 1400α apart) v̄ = 0/0 has no float64 answer: the
    # library returns 0 (docs/method.md §2.8); it must at least stay within the range of v.
    sound = S > 1e-280
    err_k = (k.grad[:, 0] - gk).abs()[sound]
    assert err_k.max().item() <= 1e-6, f"grad_k errors per row: {err_k.tolist()}"
    assert torch.all(k.grad[~sound, 0].abs() <= v[~sound].abs().max(dim=1).values)
    if alpha >= 1e-2:
        assert bool(sound.all())
    assert abs(a.grad.item() - ga.item()) <= 1e-6 * abs(ga.item()) + 1e-9 * ga_scale.item()


# ---------------------------------------------------------------------------------------------
# gradcheck (float64, small shapes)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["window", "full"])
@pytest.mark.parametrize("alpha", [0.5, 0.1])
@pytest.mark.parametrize("k_layout", ["trailing1", "per_row"])
@pytest.mark.parametrize("dist", ["randn", "relu"])
def test_gradcheck_batch_dims(dist, k_layout, alpha, path):
    gen = gen_for("gc", dist, k_layout, alpha, path)
    n = 14
    x = make_x(dist, 6, n, gen).reshape(2, 3, n).requires_grad_()
    k = (torch.rand(2, 3, generator=gen, dtype=F64) * 3 + 0.4)  # k ≤ 3.4: window 10 < 14
    k[0, 1] = 2.0  # one exactly integer budget
    if k_layout == "trailing1":
        k = k.unsqueeze(-1)
    k.requires_grad_()
    a = torch.tensor(alpha, dtype=F64, requires_grad=True)
    window = None if path == "window" else n
    if path == "window":
        assert window_size(float(k.detach().max()), n) < n
    assert torch.autograd.gradcheck(lambda x_, k_, a_: soft_topk(x_, k_, a_, window=window), (x, k, a))


def test_gradcheck_one_dimensional_and_large_k():
    gen = gen_for("gc1d")
    x = torch.randn(9, generator=gen, dtype=F64, requires_grad=True)
    a = torch.tensor(0.3, dtype=F64, requires_grad=True)
    for kv in (0.2, 4.5, 8.6):  # upper tail, interior, lower tail (window is the whole row)
        k = torch.tensor(kv, dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x_, k_, a_: soft_topk(x_, k_, a_), (x, k, a))


# ---------------------------------------------------------------------------------------------
# Hard limit at α = 1e-4 (docs/method.md §2.8)
# ---------------------------------------------------------------------------------------------


def _separated(B: int, n: int, gap: float, gen: torch.Generator, dtype) -> torch.Tensor:
    """Rows that are random permutations of 0, gap, 2·gap, … (all gaps ≫ α)."""
    rows = [torch.randperm(n, generator=gen).to(F64) * gap for _ in range(B)]
    return torch.stack(rows).to(dtype)


def _hard_limit_run(tag: str, dtype, window, k_list: list[float], gap: float):
    """soft_topk at α = 1e-4 on well-separated rows (n = 300), backward with random v.

    Returns x, k (with grads), p and v sorted by descending x (float64), and the dtype's tolerance.
    """
    gen = gen_for(tag, str(dtype), window)
    B, n = len(k_list), 300
    x0 = _separated(B, n, gap, gen, dtype)
    x = x0.clone().requires_grad_()
    k = torch.tensor(k_list, dtype=dtype).reshape(B, 1).requires_grad_()
    p = soft_topk(x, k, 1e-4, window=window)
    v = torch.randn(B, n, generator=gen, dtype=dtype)
    p.backward(v)
    order = x0.argsort(dim=1, descending=True)
    tol = 1e-9 if dtype == torch.float64 else 1e-6
    return x, k, p.detach().gather(1, order).to(F64), v.gather(1, order).to(F64), tol


@pytest.mark.parametrize("window", [None, 300])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hard_limit_fractional_k(dtype, window):
    n = 300
    x, k, p_sorted, v_sorted, tol = _hard_limit_run("hard", dtype, window, [5.3, 1.3, 20.5, 100.7, 0.4], 0.02)
    for b, kb in enumerate(k.detach()[:, 0].tolist()):  # k as stored (100.7 is not exact in fp32)
        m = math.floor(kb)
        expected = torch.zeros(n, dtype=F64)
        expected[:m] = 1.0
        expected[m] = kb - m
        assert (p_sorted[b] - expected).abs().max().item() <= tol
        # q concentrates on the boundary element: grad_k ≈ v_b and grad_x ≈ 0.
        assert abs(k.grad[b, 0].item() - v_sorted[b, m].item()) <= 10 * tol
    assert x.grad.abs().max().item() <= 1e-6


@pytest.mark.parametrize("window", [None, 300])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hard_limit_integer_k(dtype, window):
    """Integer k: t sits midway between ranks k and k+1, so grad_k is the mean of their v.

    q there is ~e^{−50}/α, tiny but non-zero; any cancellation in Σ q v would blow v̄ up.
    """
    n = 300
    k_list = [64.0, 1.0, 5.0]
    x, k, p_sorted, v_sorted, tol = _hard_limit_run("hardint", dtype, window, k_list, 0.01)
    for b, kb in enumerate(k_list):
        m = int(kb)
        expected = torch.zeros(n, dtype=F64)
        expected[:m] = 1.0
        assert (p_sorted[b] - expected).abs().max().item() <= tol
        mean_v = 0.5 * (v_sorted[b, m - 1] + v_sorted[b, m]).item()
        assert abs(k.grad[b, 0].item() - mean_v) <= 1e-3, (kb, k.grad[b, 0].item(), mean_v)
    assert torch.isfinite(x.grad).all()


# ---------------------------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("which", ["zero", "full"])
def test_k_zero_and_k_n_are_exact_with_zero_grads(which, dtype):
    gen = gen_for("ends", which, str(dtype))
    n = 50
    x = torch.randn(3, n, generator=gen, dtype=dtype, requires_grad=True)
    kv = 0.0 if which == "zero" else float(n)
    k = torch.full((3, 1), kv, dtype=dtype, requires_grad=True)
    a = torch.tensor(0.3, dtype=dtype, requires_grad=True)
    p = soft_topk(x, k, a)
    assert torch.equal(p, torch.full_like(p, 0.0 if which == "zero" else 1.0))
    p.backward(torch.randn(3, n, generator=gen, dtype=dtype))
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert torch.equal(k.grad, torch.zeros_like(k))
    assert a.grad.item() == 0.0


def test_mixed_rows_in_one_batch():
    gen = gen_for("mixed")
    n = 40
    x0 = torch.randn(5, n, generator=gen, dtype=F64)
    k_list = [0.0, 2.5, float(n), 7.0, 1.0]
    k0 = torch.tensor(k_list, dtype=F64).reshape(5, 1)
    x = x0.clone().requires_grad_()
    k = k0.clone().requires_grad_()
    a = torch.tensor(0.2, dtype=F64, requires_grad=True)
    p = soft_topk(x, k, a)
    assert torch.equal(p[0], torch.zeros(n, dtype=F64))
    assert torch.equal(p[2], torch.ones(n, dtype=F64))
    for b in (1, 3, 4):
        assert abs(p[b].sum().item() - k_list[b]) <= 1e-9
        alone = soft_topk(x0[b : b + 1], k_list[b], 0.2)  # the window path, row on its own
        assert (p[b] - alone[0]).abs().max().item() <= 1e-10
    ref = reference_p(x0[[1, 3, 4]], k0[[1, 3, 4]], 0.2)
    assert (p[[1, 3, 4]] - ref).abs().max().item() <= 1e-9
    # The saturated rows add nothing (and no NaN) to any gradient, including the batch-summed α.
    v = torch.randn(5, n, generator=gen, dtype=F64)
    p.backward(v)
    assert torch.isfinite(a.grad)
    sub_x = x0[[1, 3, 4]].clone().requires_grad_()
    sub_a = torch.tensor(0.2, dtype=F64, requires_grad=True)
    soft_topk(sub_x, k0[[1, 3, 4]], sub_a).backward(v[[1, 3, 4]])
    assert abs(a.grad.item() - sub_a.grad.item()) <= 1e-9 * (1 + abs(sub_a.grad.item()))
    assert torch.equal(x.grad[[0, 2]], torch.zeros(2, n, dtype=F64))
    assert k.grad[0].item() == 0.0 and k.grad[2].item() == 0.0


@pytest.mark.parametrize("window", [None, "full"])
@pytest.mark.parametrize("alpha", [1.0, 1e-2, 1e-4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ties_are_exact(dtype, alpha, window):
    """Equal inputs give bit-identical p, also when a tie block straddles the window edge."""
    gen = gen_for("ties", str(dtype), alpha, window)
    n = 60
    row = torch.cat([torch.tensor([5.0, 4.0, 3.0]), torch.full((20,), 1.0),
                     torch.randn(n - 23, generator=gen).clamp(-3, 0.5) - 0.5])
    x = torch.stack([row[torch.randperm(n, generator=gen)] for _ in range(3)]).to(dtype)
    ints = torch.randint(0, 4, (3, n), generator=gen).to(dtype)
    x = torch.cat([x, ints])
    k = torch.tensor([[2.5], [3.0], [10.2], [2.5], [7.0], [15.75]], dtype=dtype)
    w = n if window == "full" else None
    if w is None:
        assert window_size(float(k.max()), n) < n
    p = soft_topk(x, k, alpha, window=w)
    for b in range(x.shape[0]):
        for val in x[b].unique():
            group = p[b][x[b] == val]
            assert torch.all(group == group[0]), (b, val.item(), group)
    assert (p.double().sum(dim=1) - k[:, 0].double()).abs().max().item() <= (1e-9 if dtype == F64 else 1e-3)


@pytest.mark.parametrize("kv", [64.0, 1.0, 3.0, 0.5, 63.999, 64.001])
def test_fractional_and_integer_k(kv):
    gen = gen_for("kint", kv)
    x = torch.randn(4, 200, generator=gen, dtype=F64)
    p = soft_topk(x, kv, 1e-2)
    assert torch.isfinite(p).all()
    assert (p.sum(dim=1) - kv).abs().max().item() <= 1e-9
    ref = reference_p(x, torch.full((4, 1), kv, dtype=F64), 1e-2)
    assert (p - ref).abs().max().item() <= 1e-9


@pytest.mark.parametrize("alpha", [1.0, 1e-2, 1e-4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_monotonic_in_x(dtype, alpha):
    gen = gen_for("mono", str(dtype), alpha)
    x = torch.cat([torch.randn(4, 300, generator=gen), torch.randint(0, 6, (2, 300), generator=gen).float(),
                   torch.randn(2, 300, generator=gen).clamp_min(0)]).to(dtype)
    k = torch.tensor([[0.5], [5.0], [12.3], [290.5], [40.5], [1.0], [3.3], [150.2]], dtype=dtype)
    p = soft_topk(x, k, alpha)
    order = x.argsort(dim=1)
    xs = x.gather(1, order)
    ps = p.gather(1, order)
    assert torch.all(ps[:, 1:] >= ps[:, :-1])
    # strictly larger p where it is representable: compare pairs of distinct x in the soft region
    assert torch.all((xs[:, 1:] > xs[:, :-1]) | (ps[:, 1:] == ps[:, :-1]))


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_invalid_k_names_the_row():
    x = torch.randn(4, 10)
    with pytest.raises(ValueError, match=r"k\[row 2\] = -0\.5"):
        soft_topk(x, torch.tensor([1.0, 2.0, -0.5, 3.0]), 0.1)
    with pytest.raises(ValueError, match=r"k\[row 1\] = 10\.5.*n=10"):
        soft_topk(x, torch.tensor([[1.0], [10.5], [2.0], [3.0]]), 0.1)
    with pytest.raises(ValueError, match=r"k\[row 3\] = nan"):
        soft_topk(x, torch.tensor([1.0, 2.0, 2.0, float("nan")]), 0.1)
    with pytest.raises(ValueError, match=r"k\[row 0\] = inf"):
        soft_topk(x, torch.tensor([float("inf"), 2.0, 2.0, 1.0]), 0.1)
    with pytest.raises(ValueError, match=r"k\[row 0\] = -1\.0.*4 row\(s\)"):
        soft_topk(x, -1.0, 0.1)
    with pytest.raises(ValueError, match=r"k\[row 0\] = 11\.0"):
        soft_topk(x, 11, 0.1)
    # leading batch dims: the flat row index is reported
    k = torch.ones(2, 3)
    k[1, 0] = -2.0
    with pytest.raises(ValueError, match=r"k\[row 3\] = -2\.0"):
        soft_topk(torch.randn(2, 3, 10), k, 0.1)


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf"), -math.inf])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_invalid_alpha(bad, as_tensor):
    alpha = torch.tensor(bad) if as_tensor else bad
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        soft_topk(torch.randn(3, 10), 2.0, alpha)


def test_alpha_with_several_elements_is_rejected():
    with pytest.raises(ValueError, match=r"alpha must be a float or a 0-d tensor.*\(2,\)"):
        soft_topk(torch.randn(3, 10), 2.0, torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize("bad", [float("nan"), math.inf, -math.inf])
def test_non_finite_x_names_the_row(bad):
    x = torch.randn(4, 10)
    x[2, 5] = bad
    with pytest.raises(ValueError, match=r"x has non-finite values in row 2 \(1 row\(s\)"):
        soft_topk(x, 2.0, 0.1)
    x3 = torch.randn(2, 3, 10)
    x3[1, 2, 0] = bad
    x3[1, 1, 9] = bad
    with pytest.raises(ValueError, match=r"x has non-finite values in row 4 \(2 row\(s\)"):
        soft_topk(x3, 2.0, 0.1)
    x1 = torch.randn(10)
    x1[3] = bad
    with pytest.raises(ValueError, match=r"x has non-finite values in row 0"):
        soft_topk(x1, 2.0, 0.1)
    xh = torch.randn(3, 10).half()
    xh[1, 1] = bad
    with pytest.raises(ValueError, match=r"x has non-finite values in row 1"):
        soft_topk(xh, 2.0, 0.1)


def test_k_shape_that_does_not_broadcast():
    x = torch.randn(4, 10)
    with pytest.raises(ValueError, match=r"k of shape \(3,\) does not broadcast to \(4, 1\)"):
        soft_topk(x, torch.ones(3), 0.1)
    with pytest.raises(ValueError, match=r"k of shape \(4, 2\) does not broadcast"):
        soft_topk(x, torch.ones(4, 2), 0.1)
    with pytest.raises(ValueError, match=r"k of shape \(3, 2, 1\) does not broadcast to \(2, 3, 1\)"):
        soft_topk(torch.randn(2, 3, 10), torch.ones(3, 2, 1), 0.1)


def test_bad_x_type():
    with pytest.raises(ValueError, match="floating point"):
        soft_topk(torch.arange(10), 2.0, 0.1)
    with pytest.raises(ValueError, match="at least one dimension"):
        soft_topk(torch.tensor(1.0), 0.5, 0.1)


# ---------------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_dtype_matches_input(dtype):
    gen = gen_for("dtype", str(dtype))
    x = torch.randn(3, 2, 50, generator=gen).to(dtype).requires_grad_()
    p = soft_topk(x, torch.tensor([[2.5, 3.0], [0.5, 7.25], [1.0, 49.0]]), 0.1)
    assert p.dtype == dtype and p.shape == x.shape
    p.sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


def test_fp32_sum_matches_k():
    gen = gen_for("fp32sum")
    x = torch.randn(64, 4096, generator=gen).clamp_min(0)
    k = torch.rand(64, 1, generator=gen) * 199 + 1
    p = soft_topk(x, k, 1e-2)
    assert p.dtype == torch.float32
    err = (p.double().sum(dim=1) - k[:, 0].double()).abs()
    assert torch.all(err <= 1e-4 * k[:, 0].double()), err.max()


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_half_precision_close_to_fp32(dtype, tol):
    gen = gen_for("half", str(dtype))
    xh = torch.randn(8, 512, generator=gen).clamp_min(0).to(dtype)
    k = torch.rand(8, 1, generator=gen) * 30 + 0.5
    ph = soft_topk(xh, k, 1e-2)
    p32 = soft_topk(xh.float(), k, 1e-2)  # the same (representable) inputs in fp32
    assert ph.dtype == dtype
    assert (ph.float() - p32).abs().max().item() <= tol
    assert (ph.double().sum(dim=1) - k[:, 0].double()).abs().max().item() <= tol * 512


# ---------------------------------------------------------------------------------------------
# Window vs full sort, α as float vs tensor
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dist", DISTS)
def test_window_matches_full_sort(dist, alpha):
    gen = gen_for("win", dist, alpha)
    n = 400
    x0 = make_x(dist, B_REF, n, gen)
    k = make_k("window", B_REF, n, gen)
    K = window_size(float(k.max()), n)
    assert K < n
    v = torch.randn(B_REF, n, generator=gen, dtype=F64)
    results = []
    for window in (None, K + 17, n):
        x = x0.clone().requires_grad_()
        kk = k.clone().requires_grad_()
        p = soft_topk(x, kk, alpha, window=window)
        p.backward(v)
        results.append((p.detach(), x.grad, kk.grad))
    p_ref, gx_ref, gk_ref = results[-1]
    for p, gx, gk in results[:-1]:
        assert (p - p_ref).abs().max().item() <= 1e-10
        assert (gx - gx_ref).abs().max().item() <= 1e-8 * (gx_ref.abs().max().item() + 1)
        assert (gk - gk_ref).abs().max().item() <= 1e-8


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_alpha_float_and_tensor_identical_and_not_modified(dtype):
    gen = gen_for("alpha", str(dtype))
    x0 = torch.randn(4, 100, generator=gen).to(dtype)
    k = torch.tensor([[1.5], [3.0], [10.25], [60.0]], dtype=dtype)
    v = torch.randn(4, 100, generator=gen).to(dtype)

    def run(alpha):
        x = x0.clone().requires_grad_()
        p = soft_topk(x, k, alpha)
        p.backward(v)
        return p.detach(), x.grad

    a_plain = torch.tensor(0.05, dtype=dtype)
    a_grad = torch.tensor(0.05, dtype=dtype, requires_grad=True)
    p_f, g_f = run(a_plain.item())  # the same number as a float (0.05 is not exact in fp32)
    versions = (a_plain._version, a_grad._version)
    for a in (a_plain, a_grad):
        p_t, g_t = run(a)
        assert torch.equal(p_f, p_t)
        assert torch.equal(g_f, g_t)
    # The official wrapper overwrote alpha.data with −|α|: ours must leave the tensor untouched.
    assert torch.equal(a_plain, torch.tensor(0.05, dtype=dtype))
    assert torch.equal(a_grad.detach(), torch.tensor(0.05, dtype=dtype))
    assert (a_plain._version, a_grad._version) == versions
    assert a_grad.requires_grad and a_grad.grad is not None and torch.isfinite(a_grad.grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_matches_cpu(dtype):
    gen = gen_for("cuda", str(dtype))
    x0 = torch.randn(16, 1000, generator=gen).clamp_min(0).to(dtype)
    k0 = (torch.rand(16, 1, generator=gen) * 50 + 0.5).to(dtype)
    k0[0] = 64.0
    v = torch.randn(16, 1000, generator=gen).to(dtype)
    out = {}
    for device in ("cpu", "cuda"):
        x = x0.to(device).requires_grad_()
        k = k0.to(device).requires_grad_()
        a = torch.tensor(1e-2, dtype=dtype, device=device, requires_grad=True)
        p = soft_topk(x, k, a)
        p.backward(v.to(device))
        out[device] = [t.detach().cpu().double() for t in (p, x.grad, k.grad, a.grad)]
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for c, g in zip(out["cpu"], out["cuda"], strict=True):
        assert (c - g).abs().max().item() <= tol * (1 + c.abs().max().item())


# ------------------------------------------------------------------ fused gate x ⊙ p


@pytest.mark.parametrize("n,k_vals", [(12, [2.3, 5.0, 0.7, 11.2]), (300, [3.5, 10.0, 1.2, 7.7])])
def test_gate_gradcheck_x_and_k(n, k_vals):
    """n=12 uses the full sort, n=300 the top-K window."""
    torch.manual_seed(3)
    x = torch.randn(4, n, dtype=torch.float64).relu().add(0.01 * torch.rand(4, n, dtype=torch.float64))
    x.requires_grad_(True)
    k = torch.tensor(k_vals, dtype=torch.float64).unsqueeze(1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: soft_topk_gate(a, b, 0.3)[0], (x, k))


@pytest.mark.parametrize("alpha", [1.0, 1e-2, 1e-4])
def test_gate_matches_unfused_product(alpha):
    torch.manual_seed(4)
    x = torch.randn(16, 2000).relu_()
    k = (torch.rand(16, 1) * 40 + 1)
    g = torch.randn(16, 2000)
    xa, ka = x.clone().requires_grad_(), k.clone().requires_grad_()
    z_ref = xa * soft_topk(xa, ka, alpha)
    z_ref.backward(g)
    xb, kb = x.clone().requires_grad_(), k.clone().requires_grad_()
    z, t, kth, top = soft_topk_gate(xb, kb, alpha)
    z.backward(g)
    torch.testing.assert_close(z, z_ref.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kb.grad, ka.grad, rtol=1e-4, atol=1e-5)
    # t is the threshold: p > 1/2 exactly where x > t.
    p = soft_topk(x, k, alpha)
    assert t.shape == (16,)
    assert torch.equal(p > 0.5, x > t.unsqueeze(1))
    # kth is the hard top-⌊k⌋ cut: exactly the topk_mask selection (no ties in continuous data).
    assert torch.equal(x >= kth.unsqueeze(1), topk_mask(x, k))
    # top lists positions by descending x; its first ⌊k⌋ columns are that same selection.
    assert top.shape[0] == 16
    assert int(k.max().floor()) < top.shape[1] <= window_size(float(k.max()), 2000)
    assert (x.gather(1, top).diff(dim=1) <= 0).all()
    first = torch.arange(top.shape[1]) < k.floor().long()
    hard = torch.zeros_like(x, dtype=torch.bool).scatter_(1, top, first.expand(16, -1))
    assert torch.equal(hard, topk_mask(x, k))


@pytest.mark.parametrize("alpha", [1.0, 1e-2, 1e-4])
def test_row_blocks_and_narrow_window_match_one_pass(monkeypatch, alpha):
    """The full-size passes run over blocks of rows (and the first window is narrow, redone
    with the provable one when t falls outside it): values and gradients match one block."""
    import sys

    st = sys.modules["softsae_lib.ops.soft_topk"]
    gen = gen_for("blocks", alpha)
    x = torch.randn(37, 300, generator=gen).relu_()
    k = torch.rand(37, 1, generator=gen) * 20 + 0.5
    k[3] = 0.0
    v = torch.randn(37, 300, generator=gen)
    one = _mask_and_gate(x, k, v, alpha)
    monkeypatch.setattr(st, "_BLOCK_ELEMS", 300 * 4)  # 4 rows per block (one thread), 10 blocks
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    many = _mask_and_gate(x, k, v, alpha)
    for a, b in zip(one, many, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # The narrow window gives the same p as the provable one passed explicitly.
    p_safe = soft_topk(x, k, alpha, window=window_size(float(k.max()), 300))
    torch.testing.assert_close(one[0], p_safe, rtol=1e-5, atol=1e-6)


def _mask_and_gate(x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alpha: float) -> list[torch.Tensor]:
    """Values and gradients (for x and k, upstream v) of soft_topk and of soft_topk_gate."""
    xs, ks = x.clone().requires_grad_(), k.clone().requires_grad_()
    p = soft_topk(xs, ks, alpha)
    p.backward(v)
    xg, kg = x.clone().requires_grad_(), k.clone().requires_grad_()
    gate = soft_topk_gate(xg, kg, alpha)
    gate.z.backward(v)
    return [p.detach(), xs.grad, ks.grad, gate.z.detach(), xg.grad, kg.grad, gate.t, gate.kth, gate.top]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("alpha", [1e-2, 1e-3, 1e-4, 1e-7])
@pytest.mark.parametrize("mode", ["all", "mixed", "late"])
def test_tail_free_path_equals_full_path_bit_for_bit(monkeypatch, dtype, alpha, mode):
    """Skipping the two passes over the tail of the rows where it carries nothing (off-window p
    below the flush level, T unable to move t or S) changes nothing: values and gradients equal
    the full path's exactly, for the mask and the gate, on continuous and tied rows, whether every
    row skips them (``all``) or only some: ``mixed``, a few rows packed so densely that their tail
    counts, which then take the passes alone; ``late``, the same rows let through the first guess
    (a gap of 0 α), refused on verification and redone with their tail. The path, and the mix,
    must also have been taken."""
    import sys

    sw = sys.modules["softsae_lib.ops.soft_topk_window"]
    real = sw._tail_free_rows
    taken = []

    def counting(*args, **kwargs):
        f = real(*args, **kwargs)
        taken.append((bool(f.any()), bool((~f).any())))
        return f

    # Both runs on the same windows: the switch to the wider window is tested on its own below.
    monkeypatch.setattr(sw, "_wider_spares_tail", lambda *a, **kw: False)
    gen = gen_for("tail_free", dtype, alpha, mode)
    x = torch.randn(64, 400, generator=gen, dtype=dtype).relu_()
    x[::2, :12] = 3.0  # a tie block at the top of every other row
    x[1, 100:110] = x[1].max()  # and one straddling rank k
    k = torch.rand(64, 1, generator=gen, dtype=dtype) * 24 + 0.5
    k[5] = 0.0
    k[7] = k[7].round()
    if mode == "late":  # every row with distinct values looks tail-free, the dense ones too
        monkeypatch.setattr(sw, "_TAIL_FREE_GAP", dict.fromkeys(sw._TAIL_FREE_GAP, 0.0))
    if mode != "all":  # values 1e-7·α apart: the tail's weight is of the order of the window's
        jitter = torch.rand(5, 400, generator=gen, dtype=dtype)
        x[9:14] = 1 + alpha * 1e-7 * torch.arange(400, dtype=dtype) + alpha * jitter
    v = torch.randn(64, 400, generator=gen, dtype=dtype)
    monkeypatch.setattr(sw, "_tail_free_rows", counting)
    fast = _mask_and_gate(x, k, v, alpha)
    if alpha <= 1e-4:
        assert any(free for free, _ in taken), "the tail-free path was never taken"
        assert mode == "all" or any(free and full for free, full in taken), taken
    monkeypatch.setattr(sw, "_likely_tail_free", lambda *a, **kw: None)  # every row takes the passes
    full = _mask_and_gate(x, k, v, alpha)
    for name, a, b in zip(["p", "dp/dx", "dp/dk", "z", "dz/dx", "dz/dk", "t", "kth", "top"],
                          fast, full, strict=True):
        assert torch.equal(a, b), name


def _spaced_rows(B: int, n: int, alpha: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose top values are 1/15 of the tail-free gap (69.3 α in fp32) apart, and budgets
    k in [20, 24.5]: the narrow window (⌈k_max⌉ + 9 columns) ends 8–12 ranks below k, too close
    for any row to skip its tail; the provable one (2⌈k_max⌉ + 2) ends 26–30 ranks below, far enough."""
    step = 69.3 * alpha / 15
    ranks = torch.stack([torch.randperm(n, generator=gen) for _ in range(B)]).float()
    x = 1.0 - step * ranks - 0.2 * step * torch.rand(B, n, generator=gen)  # distinct, no ties
    return x, 20 + torch.rand(B, 1, generator=gen) * 4.5


@pytest.mark.parametrize("B", [64, 512])  # the narrow window tried and given up; a probe decides
def test_wider_window_spares_the_tail_passes(monkeypatch, B):
    """When the narrow window ends too close below rank k for the rows to skip their tail, and the
    provable window ends far enough, the op takes the provable window without the passes over
    the tail: values and gradients equal the provable window's with every pass taken, bit for
    bit. Small batches try the narrow window first; large ones let a sample of rows decide, so
    the batch runs one full-size top-K."""
    import sys

    sw = sys.modules["softsae_lib.ops.soft_topk_window"]
    alpha, n = 1e-4, 400
    x, k = _spaced_rows(B, n, alpha, gen_for("wider", B))
    v = torch.randn(B, n, generator=gen_for("wider_v", B))
    K_narrow = math.ceil(float(k.max())) + 1 + sw._WINDOW_MARGIN
    K_safe = window_size(float(k.max()), n)
    calls: list[tuple[int, int]] = []
    real_topk, real_full = sw.row_topk, sw._full_forward

    def topk_spy(a, K):
        calls.append((a.shape[0], K))
        return real_topk(a, K)

    def no_full(*args, **kwargs):
        raise AssertionError("the passes over the tail ran")

    monkeypatch.setattr(sw, "_WIDER_MIN_ELEMS", 0)  # switch (and probe batches of 4 × 64 rows) at any size
    monkeypatch.setattr(sw, "row_topk", topk_spy)
    monkeypatch.setattr(sw, "_full_forward", no_full)
    auto = _mask_and_gate(x, k, v, alpha)
    probe = (sw._PROBE_ROWS, K_narrow)
    expected = [(B, K_narrow), (B, K_safe)] if B < 4 * sw._PROBE_ROWS else [probe, (B, K_safe)]
    assert calls == expected * 2, calls  # mask, then gate
    monkeypatch.setattr(sw, "_full_forward", real_full)
    monkeypatch.setattr(sw, "_likely_tail_free", lambda *a, **kw: None)  # every row takes the passes
    xs, ks = x.clone().requires_grad_(), k.clone().requires_grad_()
    p = soft_topk(xs, ks, alpha, window=K_safe)
    p.backward(v)
    xg, kg = x.clone().requires_grad_(), k.clone().requires_grad_()
    gate = soft_topk_gate(xg, kg, alpha, window=K_safe)
    gate.z.backward(v)
    full = [p.detach(), xs.grad, ks.grad, gate.z.detach(), xg.grad, kg.grad, gate.t, gate.kth, gate.top]
    for name, a, b in zip(["p", "dp/dx", "dp/dk", "z", "dz/dx", "dz/dk", "t", "kth", "top"],
                          auto, full, strict=True):
        assert torch.equal(a, b), name


def test_no_wider_window_where_it_cannot_help(monkeypatch):
    """At α = 1 the same rows' tails carry weight in every window: one full-size top-K at the
    narrow window, then the passes, as before (no second full-size top-K wasted on them)."""
    import sys

    sw = sys.modules["softsae_lib.ops.soft_topk_window"]
    x, k = _spaced_rows(512, 400, 1e-4, gen_for("no_wider"))
    calls: list[tuple[int, int]] = []
    real_topk = sw.row_topk
    monkeypatch.setattr(sw, "row_topk", lambda a, K: calls.append((a.shape[0], K)) or real_topk(a, K))
    monkeypatch.setattr(sw, "_WIDER_MIN_ELEMS", 0)
    soft_topk_gate(x, k, 1.0)
    full_batch = [c for c in calls if c[0] == 512]
    assert full_batch == [(512, math.ceil(float(k.max())) + 1 + sw._WINDOW_MARGIN)], calls


def test_small_inputs_keep_the_narrow_window(monkeypatch):
    """Under 2²² entries the passes over the tail cost less than a second top-K: the same rows that
    switch in a large input (above) stay on the narrow window, with one top-K."""
    import sys

    sw = sys.modules["softsae_lib.ops.soft_topk_window"]
    x, k = _spaced_rows(512, 400, 1e-4, gen_for("small_narrow"))
    calls: list[tuple[int, int]] = []
    real_topk = sw.row_topk
    monkeypatch.setattr(sw, "row_topk", lambda a, K: calls.append((a.shape[0], K)) or real_topk(a, K))
    soft_topk_gate(x, k, 1e-4)
    assert calls == [(512, math.ceil(float(k.max())) + 1 + sw._WINDOW_MARGIN)], calls
