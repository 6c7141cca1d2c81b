"""softsae_lib.lid: exact K-NN (vs brute force, incl. cancellation-prone data and duplicates), the
ID estimators (vs scikit-dimension on the same neighbours) and their accuracy on known manifolds."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from softsae_lib.lid import deduplicate, knn, local_id, lpca, mle, twonn_global, twonn_local
from softsae_lib.lid import neighbors as nb

skdim = pytest.importorskip("skdim")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The test problems are small: one thread avoids OpenMP stalls on the shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def brute(q: torch.Tensor, r: torch.Tensor, k: int, self_mode: bool):
    d = torch.cdist(q.double(), r.double(), compute_mode="donot_use_mm_for_euclid_dist")
    if self_mode:
        d.fill_diagonal_(math.inf)
    v, i = d.sort(dim=1, stable=True)
    return v[:, :k], i[:, :k]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- knn


@pytest.mark.parametrize(
    "n,d,k,block,dtype",
    [(1000, 5, 10, 300, torch.float32), (777, 33, 7, 100, torch.float64), (300, 3, 12, 2048, torch.float32),
     (50, 4, 49, 16, torch.float32)],  # k = N − 1: every point is a candidate
)
def test_knn_matches_brute_force(n, d, k, block, dtype):
    x = torch.randn(n, d, generator=gen(n), dtype=torch.float64).to(dtype)
    dist, idx = knn(x, k, block_size=block)
    bd, bi = brute(x, x, k, True)
    assert dist.dtype == torch.float64 and idx.dtype == torch.long and dist.shape == (n, k)
    assert torch.equal(idx, bi)
    torch.testing.assert_close(dist, bd, rtol=1e-12, atol=0)
    q = torch.randn(123, d, generator=gen(1), dtype=torch.float64).to(dtype)
    dist, idx = knn(q, k, reference=x, block_size=block)
    bd, bi = brute(q, x, k, False)
    assert torch.equal(idx, bi)
    torch.testing.assert_close(dist, bd, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_knn_tiny_separations_far_from_the_mean(dtype, monkeypatch):
    """A cluster with 1e-4 offsets around a point of norm 1e3, plus points spread at scale 1e3."""
    g = gen(3)
    c = torch.randn(1, 20, generator=g, dtype=torch.float64)
    cluster = c / c.norm() * 1e3 + 1e-4 * torch.randn(200, 20, generator=g, dtype=torch.float64)
    x = torch.cat([cluster, 1e3 * torch.randn(300, 20, generator=g, dtype=torch.float64)]).to(dtype)
    bd, bi = brute(x, x, 10, True)
    # the naive expanded form in the working precision gets the cluster's neighbours wrong
    sq = (x * x).sum(1)
    naive = (sq[:, None] + sq[None] - 2 * x @ x.T).fill_diagonal_(math.inf)
    assert (naive.topk(10, largest=False).indices.sort(1).values != bi.sort(1).values)[:200].any()
    calls = []
    redo = nb._Searcher._redo

    def spy(self, rows, thresh):
        calls.append(len(rows))
        return redo(self, rows, thresh)

    monkeypatch.setattr(nb._Searcher, "_redo", spy)
    dist, idx = knn(x, 10, block_size=128)
    assert sum(calls) > 0  # the certification caught the cancellation and re-ranked those rows exactly
    assert torch.equal(idx, bi)
    torch.testing.assert_close(dist, bd, rtol=1e-12, atol=0)
    dist, idx = knn(x[:200], 10)  # cluster alone: centring removes the large norm
    bd, bi = brute(x[:200], x[:200], 10, True)
    assert torch.equal(idx, bi) and bool((dist > 0).all())
    torch.testing.assert_close(dist, bd, rtol=1e-12, atol=0)


def test_knn_sorted_data_and_tiny_blocks():
    """Ordered data (a block's own tile holds only far points for some rows) and blocks smaller than K:
    the candidate pools start loose and the dense fallback of the merge is used."""
    x = torch.randn(300, 4, generator=gen(2), dtype=torch.float64)
    x = x[x[:, 0].argsort()]
    bd, bi = brute(x, x, 15, True)
    for block in (16, 100):
        dist, idx = knn(x, 15, block_size=block)
        assert torch.equal(idx, bi)
        torch.testing.assert_close(dist, bd, rtol=1e-12, atol=0)


def test_knn_rejects_bad_input():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError):
        knn(x, 10)  # only 9 other points
    with pytest.raises(ValueError, match="contains NaN or inf"):
        knn(torch.tensor([[0.0, math.nan]] * 3), 1)
    with pytest.raises(ValueError, match="reference contains NaN or inf"):
        knn(x, 2, reference=torch.tensor([[1.0, 2.0, -math.inf]] * 4))
    with pytest.raises(ValueError):
        knn(x, 2, duplicates="ignore")
    # finite values whose float32 sum overflows are still accepted (the fast check falls back)
    big = torch.tensor([[3e38, 0.0], [3e38, 1.0], [3e38, 3.0]])
    assert torch.equal(knn(big, 1)[1].squeeze(1), torch.tensor([1, 0, 1]))


# ---------------------------------------------------------------- duplicates


def with_duplicates() -> torch.Tensor:
    x = torch.randn(100, 4, generator=gen(5), dtype=torch.float64)
    x[[10, 20]] = x[0].clone()  # a group of 3 copies (3 pairs)
    x[30] = x[5].clone()  # a group of 2 (1 pair)
    return x


def test_deduplicate():
    x = with_duplicates()
    xu, inv, n_removed = deduplicate(x)
    assert n_removed == 3 and xu.shape == (97, 4)
    assert torch.equal(xu[inv], x)
    assert len(torch.unique(xu, dim=0)) == 97


def test_duplicates_error_and_warn_name_the_counts():
    x = with_duplicates()
    with pytest.raises(ValueError, match=r"5 of 100 points .*4 zero-distance pairs.*3 redundant copies"):
        knn(x, 5)
    with pytest.warns(UserWarning, match=r"5 of 100 points .*zero distances kept"):
        dist, idx = knn(x, 5, duplicates="warn")
    assert int((dist == 0).sum()) == 2 * 3 + 2 * 1  # each pair counted from both ends


def test_duplicates_exclude():
    x = with_duplicates()
    with pytest.warns(UserWarning, match=r"5 of 100 points.*positive distance"):
        dist, idx = knn(x, 6, duplicates="exclude")
    bd, _ = brute(x, x, 99, True)
    for i in range(100):
        pos = bd[i][bd[i] > 0][:6]
        torch.testing.assert_close(dist[i], pos, rtol=1e-12, atol=0)
        torch.testing.assert_close((x[idx[i]] - x[i]).norm(dim=1), pos, rtol=1e-12, atol=0)
    assert len(set(idx[0].tolist())) == 6 and not {0, 10, 20} & set(idx[0].tolist())


def test_duplicates_dedupe():
    x = with_duplicates()
    with pytest.warns(UserWarning, match="distinct points"):
        dist, idx = knn(x, 6, duplicates="dedupe")
    assert torch.equal(dist[0], dist[10]) and torch.equal(idx[0], idx[20])
    assert not {10, 20, 30} & set(idx.flatten().tolist())  # copies are represented by the first occurrence
    xu, inv, _ = deduplicate(x)
    bd, _ = brute(xu, xu, 6, True)
    torch.testing.assert_close(dist, bd[inv], rtol=1e-12, atol=0)
    assert bool((dist > 0).all())


def test_duplicates_reference_mode():
    ref = torch.randn(50, 3, generator=gen(6), dtype=torch.float64)
    q = torch.cat([ref[:2], torch.randn(8, 3, generator=gen(7), dtype=torch.float64)])
    with pytest.raises(ValueError, match="2 of 10 query points coincide"):
        knn(q, 4, reference=ref)
    with pytest.warns(UserWarning, match="2 of 10 query points"):
        dist, idx = knn(q, 4, reference=ref, duplicates="exclude")
    assert bool((dist > 0).all())
    bd, bi = brute(q, ref, 5, False)
    assert torch.equal(idx[:2], bi[:2, 1:]) and torch.equal(idx[2:], bi[2:, :4])


# ---------------------------------------------------------------- estimators vs scikit-dimension


@pytest.fixture(scope="module")
def graph():
    x = torch.randn(1500, 6, generator=gen(8), dtype=torch.float64)
    dist, idx = knn(x, 20)
    return x, dist, idx


@pytest.mark.parametrize("unbiased", [False, True])
def test_mle_equals_skdim(graph, unbiased):
    x, dist, idx = graph
    ref = skdim.id.MLE(unbiased=unbiased).fit(x.numpy(), precomputed_knn_arrays=(dist.numpy(), idx.numpy()))
    ours = mle(dist, normalization="k-2" if unbiased else "k-1")
    np.testing.assert_allclose(ours.numpy(), ref.dimension_pw_, rtol=1e-6)
    if not unbiased:  # skdim computing its own neighbours (sklearn) agrees too
        own = skdim.id.MLE().fit(x[:400].numpy(), n_neighbors=10).dimension_pw_
        np.testing.assert_allclose(mle(knn(x[:400], 10)[0]).numpy(), own, rtol=1e-6)
    # K columns of a wider graph = the graph with K neighbours; "k" normalisation is (K/(K−1))·"k-1"
    np.testing.assert_allclose(mle(dist, 10), mle(knn(x, 10)[0]), rtol=1e-12)
    np.testing.assert_allclose(mle(dist, normalization="k"), mle(dist) * 20 / 19, rtol=1e-12)


@pytest.mark.parametrize("method", ["linear", "mle"])
@pytest.mark.parametrize("discard", [0.1, 0.25])
def test_twonn_global_equals_skdim(graph, method, discard):
    x, dist, _ = graph
    ref = skdim.id.TwoNN(discard_fraction=discard, method=method).fit(x.numpy()).dimension_
    assert twonn_global(dist, discard, method) == pytest.approx(ref, rel=1e-6)
    xh = torch.randn(600, 40, generator=gen(9), dtype=torch.float64)  # skdim's D > 25 code path
    ref = skdim.id.TwoNN(discard_fraction=discard, method=method).fit(xh.numpy()).dimension_
    assert twonn_global(knn(xh, 2)[0], discard, method) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("rule", ["fo", "ratio"])
def test_lpca_equals_skdim(rule):
    scale = torch.linspace(1, 0.2, 8, dtype=torch.float64)
    x = torch.randn(250, 8, generator=gen(10), dtype=torch.float64) * scale
    _, idx = knn(x, 15)
    est = skdim.id.lPCA() if rule == "fo" else skdim.id.lPCA(ver="ratio", alphaRatio=0.8)
    ref = est.fit_pw(x.numpy(), precomputed_knn=idx.numpy(), n_neighbors=15).dimension_pw_
    ours = lpca(x, idx, 0.8, rule=rule)
    assert len(np.unique(ref)) > 1  # a non-trivial comparison
    np.testing.assert_array_equal(ours.numpy(), ref)


def test_lpca_on_a_linear_subspace():
    basis = torch.linalg.qr(torch.randn(12, 3, generator=gen(11), dtype=torch.float64))[0]
    x = torch.randn(400, 3, generator=gen(12), dtype=torch.float64) @ basis.T
    _, idx = knn(x, 20)
    assert bool((lpca(x, idx, rule="fo") == 3).all())
    assert bool((lpca(x, idx, 0.999, include_self=True) == 3).all())


def test_twonn_local_formula(graph):
    x, dist, idx = graph
    ours = twonn_local(dist, idx, 10)
    log_mu = (dist[:, 1] / dist[:, 0]).log()
    for i in (0, 7, 1499):
        expect = 11 / (log_mu[i] + log_mu[idx[i, :10]].sum())
        assert ours[i].item() == pytest.approx(expect.item(), rel=1e-12)
    torch.testing.assert_close(twonn_local(dist, idx, 10, include_self=False, unbiased=True),
                               9 / log_mu[idx[:, :10]].sum(1))
    # held-out queries: their own ratio from the query graph, neighbours' ratios from the reference graph
    q = torch.randn(5, 6, generator=gen(13), dtype=torch.float64)
    qd, qi = knn(q, 10, reference=x)
    expect = 11 / ((qd[:, 1] / qd[:, 0]).log() + log_mu[qi].sum(1))
    torch.testing.assert_close(twonn_local(qd, qi, reference_dist=dist), expect)


def test_local_id_uses_one_graph(graph):
    x, dist, idx = graph
    out = local_id(x, 20)
    assert list(out) == ["mle", "twonn", "lpca"] and all(v.shape == (1500,) for v in out.values())
    torch.testing.assert_close(out["mle"], mle(dist))
    torch.testing.assert_close(out["twonn"], twonn_local(dist, idx))
    torch.testing.assert_close(out["lpca"], lpca(x, idx))
    with pytest.raises(ValueError):
        local_id(x, 5, estimators=("mle", "danco"))


# ---------------------------------------------------------------- known manifolds, N = 5000

N = 5000


def sphere(m: int, g: torch.Generator, dim: int | None = None) -> torch.Tensor:
    """Uniform S^m ⊂ R^{m+1}, optionally rotated into R^dim by a random orthonormal frame (float32)."""
    z = torch.randn(N, m + 1, generator=g, dtype=torch.float64)
    z = z / z.norm(dim=1, keepdim=True)
    if dim is not None:
        z = z @ torch.linalg.qr(torch.randn(dim, m + 1, generator=g, dtype=torch.float64))[0].T
    return z.float()


def cube(m: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(N, m, generator=g, dtype=torch.float64)


def swiss_roll(g: torch.Generator) -> torch.Tensor:
    t = 1.5 * math.pi * (1 + 2 * torch.rand(N, generator=g, dtype=torch.float64))
    h = 21 * torch.rand(N, generator=g, dtype=torch.float64)
    return torch.stack([t * t.cos(), h, t * t.sin()], 1)


MANIFOLDS = {
    "sphere2": (2, lambda g: sphere(2, g)),
    "sphere5": (5, lambda g: sphere(5, g, dim=20)),
    "sphere10": (10, lambda g: sphere(10, g, dim=64)),
    "cube2": (2, lambda g: cube(2, g)),
    "cube5": (5, lambda g: cube(5, g)),
    "swiss_roll": (2, swiss_roll),
}


@pytest.mark.parametrize("name", list(MANIFOLDS))
def test_known_manifolds_within_10_percent(name):
    """Median per-point MLE (K = 20, K−1 normalisation) and global TwoNN within ±10% of the dimension."""
    m, sample = MANIFOLDS[name]
    dist, _ = knn(sample(gen(20 + m)), 20)
    assert float(mle(dist).median()) == pytest.approx(m, rel=0.10)
    assert twonn_global(dist) == pytest.approx(m, rel=0.10)


@pytest.mark.parametrize("m", [8, 10])
def test_hypercube_high_dimension_is_biased_low_at_this_n(m):
    """Known limitation, not an estimator bug: at N = 5000 the K = 20 neighbourhood of the unit m-cube
    has radius ≈ (20 / (5000 V_m))^{1/m} ≈ 0.5 for m = 10, so (nearly) every neighbourhood crosses the
    boundary and fewer neighbours are found than a boundaryless m-manifold would give: both estimators
    fall below m. Measured: m = 8: MLE median ≈ 7.0 (−12%), TwoNN ≈ 7.3 (−9%); m = 10: MLE ≈ 8.5 (−15%),
    TwoNN ≈ 8.9 (−11%). The ±10% target is therefore not met for the cube at m ≥ 8 (the 10-sphere,
    without boundary, meets it above); this test pins the size of the bias."""
    dist, _ = knn(cube(m, gen(40 + m)), 20)
    mle_med, two = float(mle(dist).median()), twonn_global(dist)
    assert 0.80 * m < mle_med < 0.90 * m
    assert 0.85 * m < two < 0.95 * m


# ---------------------------------------------------------------- devices, benchmark


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_knn_cuda_matches_cpu():
    x = torch.randn(3000, 40, generator=gen(14))
    d_cpu, i_cpu = knn(x, 15, block_size=512)
    d_gpu, i_gpu = knn(x.cuda(), 15, block_size=512)
    assert torch.equal(i_gpu.cpu(), i_cpu)
    torch.testing.assert_close(d_gpu.cpu(), d_cpu, rtol=1e-12, atol=0)


def test_benchmark_script_json():
    cmd = [sys.executable, "-m", "benchmarks.lid", "--n", "400", "--d", "16", "--k", "10", "--repeats", "1",
           "--threads", "1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=300)
    res = json.loads(out.stdout)
    assert res["n"] == 400 and res["max_rel_diff_pointwise"] < 1e-5
    assert abs(res["speedup"] - res["skdim_mle_s"] / res["ours_knn_mle_s"]) < 1e-9


def test_no_warnings_on_clean_data():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        knn(torch.randn(200, 3, generator=gen(15)), 5)


# ---------------------------------------------------------------- low-rank filter (lid/low_rank.py)


def _low_rank_data(n: int, rank: int, d: int, noise: float, seed: int, offset: float = 0.0) -> torch.Tensor:
    g = gen(seed)
    z = torch.randn(n, rank, generator=g, dtype=torch.float64)
    frame, _ = torch.linalg.qr(torch.randn(d, rank, generator=g, dtype=torch.float64))
    x = z @ frame.T + noise * torch.randn(n, d, generator=g, dtype=torch.float64) + offset
    return x.float()


def test_choose_rank_follows_the_spectrum():
    from softsae_lib.lid.low_rank import choose_rank

    r, basis = choose_rank(_low_rank_data(5000, 6, 96, 1e-4, 30), 10)
    assert r == 6 and basis.shape == (96, 6)
    torch.testing.assert_close(basis.T @ basis, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-12)
    assert choose_rank(torch.randn(5000, 96, generator=gen(31)), 10) is None  # isotropic: brute force
    assert choose_rank(torch.randn(500, 96, generator=gen(32)), 10) is None  # small N: brute force


@pytest.mark.parametrize("method", ["auto", 3, 12])
def test_low_rank_filter_is_exact(method):
    """The filter path returns exactly brute force's neighbours: with a tight basis (auto: rank 8), with a
    too-small one (3: most rows fail certification and are redone) and with a larger one (12)."""
    x = _low_rank_data(4500, 8, 64, 1e-3, 33, offset=5.0)
    dist, idx = knn(x, 15, method=method)
    bd, bi = brute(x, x, 15, True)
    assert torch.equal(idx, bi)
    torch.testing.assert_close(dist, bd, rtol=1e-12, atol=0)


def test_low_rank_filter_counts_uncertified_rows():
    from softsae_lib.lid.low_rank import knn_low_rank, low_rank_basis

    x = _low_rank_data(4500, 8, 64, 1e-3, 34)

    def search(a, b, kk, self_):
        return nb._exact_knn(a, a if b is None else b, kk, self_, 2048, 8)

    _, _, redone_tight = knn_low_rank(x, 10, low_rank_basis(x, 8)[1], 8, search)
    _, _, redone_loose = knn_low_rank(x, 10, low_rank_basis(x, 2)[1], 8, search)
    assert redone_tight < 0.05 * len(x) < 0.5 * len(x) < redone_loose


def test_low_rank_filter_with_duplicates():
    x = _low_rank_data(4500, 5, 48, 1e-3, 35)
    x[100:110] = x[7]
    with pytest.warns(UserWarning, match="11 of 4500 points have an exact duplicate"):
        dist, idx = knn(x, 6, duplicates="exclude", method=5)
    assert bool((dist[:, 0] > 0).all())
    d = torch.cdist(x[7:8].double(), x.double(), compute_mode="donot_use_mm_for_euclid_dist")[0]
    d[d == 0] = math.inf
    torch.testing.assert_close(dist[7], d.sort().values[:6], rtol=1e-12, atol=0)
