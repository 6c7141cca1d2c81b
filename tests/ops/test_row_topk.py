"""row_topk: the same values as torch.topk in the same order, on both of its paths."""

import pytest
import torch

from softsae_lib.ops import row_topk as rt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,K", [((37, 300), 10), ((37, 300), 41), ((5, 8), 7), ((64, 512), 64),
                                     ((150, 512), 30)])  # the last in three blocks of rows
@pytest.mark.parametrize("ties", [False, True])
def test_values_equal_torch_topk_and_indices_point_at_them(monkeypatch, dtype, shape, K, ties):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # the numpy path
    gen = torch.Generator().manual_seed(K + shape[1])
    x = torch.randn(*shape, generator=gen, dtype=dtype)
    if ties:  # relu zeros, repeated values and signed zeros across the cut
        x = x.relu_().round_(decimals=1)
        x[0, :] = -0.0
        x[1, ::2] = 0.0
    ref = torch.topk(x, K, dim=1, sorted=True).values
    monkeypatch.setattr(torch, "topk", None)  # the numpy path must not fall back
    vals, idx = rt.row_topk(x, K)
    assert vals.shape == idx.shape == (shape[0], K) and idx.dtype == torch.long
    assert torch.equal(vals, ref)
    assert torch.equal(x.gather(1, idx), vals)
    assert (idx.sort(dim=1).values.diff(dim=1) > 0).all()  # K distinct positions per row
    # Deterministic: the same call picks the same positions among ties.
    assert torch.equal(rt.row_topk(x, K)[1], idx)


def test_wide_rows_and_edge_widths_use_torch_topk(monkeypatch):
    """Rows wider than the numpy limit, K = 0 and K = n go to torch.topk (same results)."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    x = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(rt, "_NUMPY_MAX_N", 10)
    assert torch.equal(rt.row_topk(x, 5)[1], torch.topk(x, 5, dim=1).indices)
    monkeypatch.setattr(rt, "_NUMPY_MAX_N", 4096)
    assert rt.row_topk(x, 0)[0].shape == (4, 0)
    assert torch.equal(rt.row_topk(x, 50)[0], torch.sort(x, dim=1, descending=True).values)


def test_small_k_in_wide_rows_uses_torch_topk(monkeypatch):
    """K below 1/32 of the row goes to torch.topk (cheaper there), from 1/32 on to numpy."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    x = torch.randn(3, 640, generator=torch.Generator().manual_seed(1))
    calls = []
    real_topk = torch.topk
    monkeypatch.setattr(torch, "topk", lambda *a, **kw: calls.append(a[1]) or real_topk(*a, **kw))
    for K in (19, 20):  # 640 / 32 = 20
        assert torch.equal(rt.row_topk(x, K)[0], real_topk(x, K, dim=1).values)
    assert calls == [19]
