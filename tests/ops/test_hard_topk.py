"""Tests for the hard top-k selections ``topk_mask``, ``per_row_topk`` and ``batch_topk``."""

from __future__ import annotations

import math

import pytest
import torch

from softsae_lib.ops import batch_topk, per_row_topk, topk_mask
from softsae_lib.ops.hard_topk import batch_topk_with_firing, per_row_topk_with_firing

K_FRAC = [0.0, 0.99, 1.0, 3.7, 12.2, 40.0]


def _x(B: int = 6, n: int = 40, seed: int = 0, ties: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if ties:
        return torch.randint(0, 4, (B, n), generator=gen).float()
    return torch.randn(B, n, generator=gen)


def _assert_is_top(x_row: torch.Tensor, keep_row: torch.Tensor) -> None:
    """The kept entries are the largest ones: min(kept) ≥ max(dropped)."""
    if keep_row.any() and (~keep_row).any():
        assert x_row[keep_row].min() >= x_row[~keep_row].max()


@pytest.mark.parametrize("layout", ["flat", "column", "list"])
@pytest.mark.parametrize("ties", [False, True])
def test_topk_mask_floors_fractional_per_row_k(ties, layout):
    x = _x(ties=ties)
    k = torch.tensor(K_FRAC)
    if layout == "column":
        k = k.unsqueeze(1)
    elif layout == "list":
        k = K_FRAC
    mask = topk_mask(x, k)
    assert mask.dtype == torch.bool and mask.shape == x.shape
    expected = torch.tensor([math.floor(v) for v in K_FRAC])
    assert torch.equal(mask.sum(dim=1), expected)
    assert not mask[0].any()  # k = 0: nothing kept
    assert mask[-1].all()  # k = n: everything kept
    for b in range(x.shape[0]):
        _assert_is_top(x[b], mask[b])


def test_topk_mask_scalar_and_integer_k():
    x = _x()
    assert torch.equal(topk_mask(x, 3.9).sum(dim=1), torch.full((6,), 3))
    assert torch.equal(topk_mask(x, 5).sum(dim=1), torch.full((6,), 5))
    k_int = torch.tensor([0, 1, 2, 3, 4, 5])
    m = topk_mask(x, k_int)
    assert torch.equal(m.sum(dim=1), k_int)
    # the selection matches torch.topk's indices exactly
    for b in range(6):
        idx = torch.topk(x[b], int(k_int[b])).indices
        assert torch.equal(m[b].nonzero().flatten().sort().values, idx.sort().values)


def test_topk_mask_all_zero_k():
    x = _x()
    assert not topk_mask(x, 0.0).any()
    assert not topk_mask(x, torch.zeros(6)).any()


def test_per_row_topk_values_and_gradients():
    x0 = _x(seed=1)
    x = x0.clone().requires_grad_()
    k = torch.tensor(K_FRAC)
    y = per_row_topk(x, k)
    mask = topk_mask(x0, k)
    assert torch.equal(y.detach(), torch.where(mask, x0, torch.zeros_like(x0)))
    v = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    y.backward(v)
    # gradients reach exactly the kept entries, unchanged; dropped entries get exact zeros
    assert torch.equal(x.grad, torch.where(mask, v, torch.zeros_like(v)))
    assert torch.equal(x.grad[0], torch.zeros(40))


def test_per_row_topk_keeps_input_dtype():
    x = _x(seed=3).double()
    y = per_row_topk(x, 2.5)
    assert y.dtype == torch.float64
    assert torch.equal((y != 0).sum(dim=1), torch.full((6,), 2))


@pytest.mark.parametrize("k", [0.0, 0.5, 1.0, 2.5, 7.25, 40.0])
def test_batch_topk_keeps_global_largest(k):
    x0 = _x(B=8, n=40, seed=4)
    x = x0.clone().requires_grad_()
    y = batch_topk(x, k)
    total = math.floor(k * 8)
    keep = y.detach() != 0  # randn has no exact zeros
    assert int(keep.sum()) == total
    assert torch.equal(y.detach()[keep], x0[keep])
    _assert_is_top(x0.flatten(), keep.flatten())
    # per-row counts may differ from k (it is a batch-level budget) but the total is exact
    if 0 < k < 40:
        expected = torch.zeros(320, dtype=torch.bool)
        expected[torch.topk(x0.flatten(), total).indices] = True
        assert torch.equal(keep.flatten(), expected)
    v = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    y.backward(v)
    assert torch.equal(x.grad, torch.where(keep, v, torch.zeros_like(v)))


def test_batch_topk_non_integer_total_floors():
    x = _x(B=3, n=10, seed=6)
    assert int((batch_topk(x, 1.5) != 0).sum()) == 4  # ⌊1.5·3⌋
    assert int((batch_topk(x, 0.2) != 0).sum()) == 0  # ⌊0.6⌋


def test_invalid_per_row_k_names_the_row():
    x = _x()
    with pytest.raises(ValueError, match=r"k\[row 2\] = -0\.5 is outside \[0, n=40\]"):
        topk_mask(x, torch.tensor([1.0, 2.0, -0.5, 3.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"k\[row 4\] = 41\.0"):
        per_row_topk(x, torch.tensor([1.0, 2.0, 0.5, 3.0, 41.0, 1.0]))
    with pytest.raises(ValueError, match=r"k\[row 1\] = nan"):
        topk_mask(x, torch.tensor([1.0, float("nan"), 0.5, 3.0, 4.0, 1.0]))
    with pytest.raises(ValueError, match=r"k\[row 0\] = -1"):
        topk_mask(x, -1)
    with pytest.raises(ValueError, match=r"k of shape \(5,\) must be a scalar, \(batch,\) or \(batch, 1\)"):
        topk_mask(x, torch.ones(5))
    with pytest.raises(ValueError, match=r"expected x of shape \(batch, n\)"):
        topk_mask(torch.randn(2, 3, 4), 1.0)


@pytest.mark.parametrize("bad", [-0.1, -1.0, 40.5, float("nan"), math.inf])
def test_invalid_batch_topk_k(bad):
    with pytest.raises(ValueError, match=r"batch_topk: k = .* is outside \[0, n=40\]"):
        batch_topk(_x(), bad)


def test_batch_topk_rejects_non_2d():
    with pytest.raises(ValueError, match=r"expected x of shape \(batch, n\)"):
        batch_topk(torch.randn(2, 3, 4), 1.0)


@pytest.mark.parametrize("k", [0, 1, 3, 7.9, "per_row"])
def test_per_row_topk_with_firing_matches_the_dense_firing(k):
    # ties, exact zeros and negative entries: fired and n_fired must equal the (B, n) computation
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 40, generator=gen).round(decimals=1).relu()
    x[5] = 0.0
    x[6, :10] = -1.0
    kk = torch.randint(0, 12, (64,), generator=gen).float() + 0.5 if k == "per_row" else k
    z, fired, n_fired = per_row_topk_with_firing(x, kk)
    assert torch.equal(z, per_row_topk(x, kk))
    assert torch.equal(fired, (z > 0).any(dim=0))
    assert int(n_fired) == int((z > 0).sum())
    assert fired.any() == (k not in (0,))


@pytest.mark.parametrize("k", [0, 0.5, 3, 40])
def test_batch_topk_with_firing_matches_the_dense_firing(k):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(32, 40, generator=gen).round(decimals=1).relu()
    z, fired, n_fired, kept_min = batch_topk_with_firing(x, k)
    assert torch.equal(z, batch_topk(x, k))
    assert torch.equal(fired, (z > 0).any(dim=0))
    assert int(n_fired) == int((z > 0).sum())
    kept = x[z > 0]
    assert float(kept_min) == (float(kept.min()) if kept.numel() else math.inf)
