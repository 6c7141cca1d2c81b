"""Adaptive-sparsity SAEs from the literature: Matryoshka, Feature/Mutual Choice (+ Zipf helpers),
Tree SAE, and round-trip / training / determinism checks for all of them and the sparsemax SAE."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from builders import gaussian, step_context

from softsae_lib.io import load_sae, save_sae
from softsae_lib.saes import FeatureChoiceSAE, MatryoshkaSAE, TreeSAE, make_sae
from softsae_lib.saes.choice import feature_choice
from softsae_lib.saes.tree import greedy_quotas
from softsae_lib.saes.zipf import (
    allocate_integer,
    aux_zipf_variant_loss,
    underused_mask,
    water_fill,
    zipf_targets,
)
from softsae_lib.training import TrainConfig, train_sae

pytestmark = pytest.mark.usefixtures("single_thread")
D, F, K = 8, 32, 3
NEW_ARCHS = {
    "matryoshka": {"k": K, "group_sizes": (4, 8, 20), "threshold_start_step": 5},
    "feature_choice": {"k": K, "threshold_start_step": 5},
    "mutual_choice": {"k": K, "threshold_start_step": 5},
    "sparsemax_attention": {"dense_threshold": 0.5},
    "tree": {"k": K, "layer_sizes": (8, 24), "layer_k": (2, 1), "dead_tokens": 256, "eligible_tokens": 256,
             "realloc_every": 5, "root_reset_step": 30},
}


def _x(n: int = 64, seed: int = 0) -> torch.Tensor:
    return gaussian(n, D, seed)


_ctx = functools.partial(step_context, k=K)


def _positive(m, value: float = 5.0):
    """Every pre-activation positive, so selections are limited only by the budgets."""
    with torch.no_grad():
        m.b_enc.fill_(value)
    return m


# ------------------------------------------------------------------------------------ Matryoshka


def test_matryoshka_prefixes_use_only_their_latents_and_loss_is_their_sum() -> None:
    m = make_sae("matryoshka", d_model=D, dict_size=F, k=K, group_sizes=(4, 8, 20), normalization="none")
    assert m.prefix_widths == (4, 12, 32)
    x = _x()
    out = m.loss(x, _ctx())
    assert int(out.active.sum()) == K * 64  # one BatchTopK over the whole dictionary
    z = out.pre_acts * out.active
    recons = m.prefix_reconstructions(z)
    for width, rec in zip(m.prefix_widths, recons, strict=True):
        torch.testing.assert_close(rec, z[:, :width] @ m.W_dec[:width] + m.b_dec)
        noisy = z.clone()
        noisy[:, width:] += 1.0  # latents beyond the prefix do not enter x̂⁽ʲ⁾
        torch.testing.assert_close(m.prefix_reconstructions(noisy)[m.prefix_widths.index(width)], rec)
    per = [(x - r).pow(2).sum(1).mean() for r in recons]
    assert out.loss.item() == pytest.approx(sum(per).item(), rel=1e-5)
    assert out.terms["l2"] == pytest.approx(per[-1].item(), rel=1e-5)
    mean = make_sae("matryoshka", d_model=D, dict_size=F, k=K, group_sizes=(4, 8, 20), normalization="none",
                    prefix_loss="mean")
    assert mean.loss(x, _ctx()).loss.item() == pytest.approx(sum(per).item() / 3, rel=1e-5)


def test_matryoshka_global_threshold_and_prefix_inference() -> None:
    m = make_sae("matryoshka", d_model=D, dict_size=F, k=K, group_sizes=(4, 8, 20), normalization="none")
    with pytest.raises(RuntimeError, match="threshold"):
        m.encode(_x())
    theta = m.calibrate_threshold([_x(32, s) for s in range(3)])
    x = _x(50, 9)
    r = torch.relu(m.pre_activations(x))
    torch.testing.assert_close(m.encode(x), r * (r > theta))
    z2 = m.encode_prefix(x, 2)
    assert (z2[:, 12:] == 0).all() and torch.equal(z2[:, :12], m.encode(x)[:, :12])
    with pytest.raises(ValueError, match="level"):
        m.encode_prefix(x, 4)


def test_matryoshka_group_sizes_from_fractions_and_validation() -> None:
    m = make_sae("matryoshka", d_model=D, dict_size=64, k=K)
    assert m.config.resolved_group_sizes() == (2, 4, 8, 16, 34)  # [1/32, 1/16, 1/8, 1/4, 17/32]
    with pytest.raises(ValueError, match="sum to dict_size"):
        make_sae("matryoshka", d_model=D, dict_size=F, k=K, group_sizes=(4, 4))
    with pytest.raises(ValueError, match="sum to 1"):
        make_sae("matryoshka", d_model=D, dict_size=F, k=K, group_fractions=(0.5, 0.2))


# ------------------------------------------------------------------------------ Zipf helpers


def test_water_fill_and_integer_allocation() -> None:
    w = torch.tensor([8.0, 4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    a = water_fill(w, total=10, cap=3)
    torch.testing.assert_close(a.sum(), torch.tensor(10.0, dtype=torch.float64))
    assert a.max() <= 3 + 1e-12 and a[0] == 3 and a[1] == 3  # the head is capped, the rest rescaled
    torch.testing.assert_close(a[2:] / a[2:].sum(), w[2:] / w[2:].sum())
    ints = allocate_integer(a, 10)
    assert int(ints.sum()) == 10 and int(ints.max()) <= 3
    assert (ints.double() - a).abs().max() < 1
    with pytest.raises(ValueError, match="outside"):
        water_fill(w, total=16, cap=3)


def test_zipf_targets_follow_rank() -> None:
    scores = torch.tensor([0.1, 5.0, 2.0, 0.0])
    t = zipf_targets(scores, exponent=1.0, total=2.0, cap=1.0)
    # Ranks by score: feature 1, 2, 0, 3 → weights 1, 1/2, 1/3, 1/4, scaled to sum 2 (no cap hit).
    expected = torch.tensor([1 / 3, 1.0, 1 / 2, 1 / 4], dtype=torch.float64)
    torch.testing.assert_close(t, expected * 2 / expected.sum())


def test_aux_zipf_variant_flags_underused_and_dead_features() -> None:
    density = torch.tensor([0.9, 0.5, 0.3, 0.0, 0.001, 0.2])
    mask = underused_mask(density, k=2.0, exponent=1.0, gamma=0.1)
    assert mask[3] and mask[4] and not mask[:3].any()
    pre = torch.rand(16, 6, generator=torch.Generator().manual_seed(0))
    res = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    W = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    loss, n = aux_zipf_variant_loss(pre, res, density, W, k=2.0, k_aux=2)
    assert n == 2 and loss.item() > 0
    healthy = torch.full((6,), 2.0 / 6)
    assert aux_zipf_variant_loss(pre, res, healthy, W, k=2.0, k_aux=2)[0].item() == 0.0


# ------------------------------------------------------------------------- Feature / Mutual Choice


@pytest.mark.parametrize("capacity", ["uniform", "zipf"])
def test_feature_choice_respects_capacities(capacity: str) -> None:
    m = _positive(make_sae("feature_choice", d_model=D, dict_size=F, k=K, capacity=capacity,
                           normalization="none"))
    with torch.no_grad():
        m.affinity.copy_(torch.linspace(1, 0, F))  # feature 0 ranks first
    caps = m.capacities(64, K)
    assert int(caps.sum()) == K * 64 and int(caps.max()) <= 64
    if capacity == "uniform":
        assert int(caps.max() - caps.min()) <= 1
    else:
        assert (caps[:-1] >= caps[1:]).all()  # non-increasing with rank
        assert caps[0] / caps[1] == pytest.approx(2.0, abs=0.1)  # r^−1: rank 1 has twice rank 2
    out = m.loss(_x(), _ctx())
    per_feature = out.active.sum(dim=0)
    assert (per_feature <= caps).all() and torch.equal(per_feature, caps)  # all positive → exactly m_j
    per_token = out.active.sum(dim=1)
    assert per_token.float().std() > 0  # tokens get a variable number of features
    # Each feature keeps its best tokens: kept ≥ dropped within every column.
    r = out.pre_acts
    for j in range(F):
        kept, dropped = r[out.active[:, j], j], r[~out.active[:, j], j]
        if kept.numel() and dropped.numel():
            assert kept.min() >= dropped.max()


def test_feature_choice_function_and_thresholds() -> None:
    r = torch.tensor([[3.0, 0.0], [1.0, 2.0], [2.0, 1.0]])
    z = feature_choice(r, torch.tensor([2, 1]))
    torch.testing.assert_close(z, torch.tensor([[3.0, 0.0], [0.0, 2.0], [2.0, 0.0]]))
    with pytest.raises(ValueError, match="capacities"):
        feature_choice(r, torch.tensor([4, 1]))
    m = make_sae("feature_choice", d_model=D, dict_size=F, k=K, normalization="none", threshold_start_step=1,
                 threshold_beta=0.5)
    with pytest.raises(RuntimeError, match="thresholds"):
        m.encode(_x())
    outs = []
    for step in range(3):
        out = m.loss(_x(64, step), _ctx(step=step))
        m.after_step(out, _ctx(step=step))
        outs.append(out)
    mins = [torch.where(o.active, o.pre_acts, torch.full_like(o.pre_acts, float("inf"))).min(0).values
            for o in outs[1:]]
    both = outs[1].active.any(0) & outs[2].active.any(0)
    torch.testing.assert_close(m.threshold[both], (0.5 * mins[0] + 0.5 * mins[1])[both])
    x = _x(40, 7)
    r = torch.relu(m.pre_activations(x))
    theta = torch.where(m.threshold < 0, torch.full_like(m.threshold, float("inf")), m.threshold)
    torch.testing.assert_close(m.encode(x), r * (r > theta))
    m.calibrate_threshold([_x(64, s) for s in range(2)])
    assert (m.threshold >= 0).any()


def test_mutual_choice_total_active_equals_global_budget_and_uses_aux_zipf() -> None:
    m = _positive(make_sae("mutual_choice", d_model=D, dict_size=F, k=K, normalization="none"))
    assert not m.uses_auxk
    out = m.loss(_x(), _ctx())
    assert int(out.active.sum()) == K * 64 and out.active.sum(1).float().std() > 0
    assert m.auxiliary_loss(out, _x(), _ctx(), None, TrainConfig()) is None  # no density estimate yet
    m.after_step(out, _ctx())
    torch.testing.assert_close(m.density, out.active.float().mean(0))
    with torch.no_grad():
        m.density[:4] = 0.0  # dead features → underused → auxiliary loss
    out2 = m.loss(_x(64, 1), _ctx(step=1))
    _, terms = m.auxiliary_loss(out2, _x(64, 1), _ctx(step=1), None, TrainConfig())
    assert terms["aux_zipf"] > 0 and terms["underused_fraction"] >= 4 / F


# -------------------------------------------------------------------------------------- Tree SAE


def _tree(**kw) -> TreeSAE:
    cfg = {"k": 4, "layer_sizes": (6, 10, 16), "layer_k": (2, 1, 1), "normalization": "none", **kw}
    return make_sae("tree", d_model=D, dict_size=F, **cfg)


def test_tree_child_never_fires_without_parent_and_budgets_hold() -> None:
    m = _tree(seed=3)
    x = _x(400)
    z = m.encode(x)
    thr = m.config.active_threshold
    for i in range(6, F):
        p = int(m.parent[i])
        if p >= 0:
            assert ((z[:, i] > 0) <= (z[:, p] > thr)).all(), f"child {i} fired without parent {p}"
    for (start, end), k in zip(m.layer_bounds, (2, 1, 1), strict=True):
        assert ((z[:, start:end] != 0).sum(1) <= k).all()
    assert (z[:, 6:] != 0).any()  # children do fire somewhere
    # All positive pre-activations and root parents everywhere: every layer uses its full budget.
    full = _positive(_tree(seed=3))
    with torch.no_grad():
        full.parent.fill_(-1)
    zf = full.encode(x)
    for (start, end), k in zip(full.layer_bounds, (2, 1, 1), strict=True):
        assert ((zf[:, start:end] != 0).sum(1) == k).all()


def test_tree_initial_parents_point_backwards() -> None:
    m = _tree(seed=0)
    assert (m.parent[:6] == -1).all()
    for (start, end) in m.layer_bounds[1:]:
        assert (m.parent[start:end] < start).all() and (m.parent[start:end] >= -1).all()


def test_tree_loss_is_cumulative_over_layers() -> None:
    m = _tree(seed=1)
    x = _x(64)
    out = m.loss(x, _ctx())
    z = m.encode(x)
    var = (x - x.mean(0)).pow(2).sum(1).mean()
    recon, total = m.b_dec.expand(64, -1), 0.0
    for start, end in m.layer_bounds:
        recon = recon + z[:, start:end] @ m.W_dec[start:end]
        total = total + (x - recon).pow(2).sum(1).mean()
    assert out.terms["auxk"] == 0.0  # nothing is dead yet
    assert out.loss.item() == pytest.approx((total / var).item(), rel=1e-5)


def test_greedy_quotas_maximise_the_minimum_capacity_per_child() -> None:
    cap = torch.tensor([6.0, 3.0, 1.0, 5.0])
    eligible = torch.tensor([True, True, True, False])
    q = greedy_quotas(cap, 5, eligible)
    assert int(q.sum()) == 5 and q[3] == 0
    best = max(min(cap[p] / c for p, c in enumerate(alloc) if c) for alloc in
               (a for a in itertools.product(range(6), repeat=3) if sum(a) == 5))
    assert min(cap[p] / q[p] for p in range(3) if q[p]) == pytest.approx(float(best))
    assert torch.equal(greedy_quotas(torch.zeros(3), 4, torch.tensor([True, False, True])),
                       torch.tensor([2, 0, 2]))


def test_tree_reallocates_only_dead_children() -> None:
    m = _tree(seed=2, dead_tokens=100, eligible_tokens=100, layer_sizes=(4, 28), layer_k=(2, 1))
    with torch.no_grad():
        m.parent[4:] = 0  # every child under feature 0
        m.since_fired.zero_()
        m.since_fired[4:20] = 1000  # children 4…19 are dead
        m.capacity.zero_()
        m.capacity[0, 1] = 10.0  # feature 1 earned all the capacity
    moved = m.reallocate_dead_children()
    assert moved == 16
    assert (m.parent[4:20] == 1).all() and (m.parent[20:] == 0).all()
    assert (m.capacity == 0).all()
    # The capacity accumulation splits the loss over fired parents and the root.
    out = m.loss(_x(), _ctx())
    fired_parents = int(out.active[:, :4].any(0).sum())
    m.after_step(out, _ctx())
    root_share = m.capacity[0, -1].item()
    assert root_share == pytest.approx(out.loss.item() / (fired_parents + 1), rel=1e-5)


def test_tree_root_reset_attaches_dead_children() -> None:
    m = _tree(seed=4, dead_tokens=10, root_reset_step=1)
    with torch.no_grad():
        m.since_fired[6:] = 1000
        m.parent[6:] = 0
    out = m.loss(_x(), _ctx())
    m.after_step(out, _ctx())
    fired = out.active.any(0)
    assert bool(m.root_reset_done)
    assert (m.parent[6:][~fired[6:]] == -1).all()


# ---------------------------------------------------------------------------- every new architecture


def _train(arch: str, seed: int = 0, steps: int = 40):
    m = make_sae(arch, d_model=D, dict_size=F, seed=seed, **NEW_ARCHS[arch])
    g = torch.Generator().manual_seed(11)
    basis = torch.randn(4, D, generator=g)
    data = torch.relu(torch.randn(2048, 4, generator=g)) @ basis + 0.01 * torch.randn(2048, D, generator=g)
    cfg = TrainConfig(steps=steps, batch_size=64, lr=1e-2, warmup_steps=1, log_every=1, progress=False,
                      dead_threshold=512, seed=seed)
    return m, train_sae(m, data, cfg), data


@pytest.mark.parametrize("arch", sorted(NEW_ARCHS))
def test_trains_saves_loads_and_is_deterministic(arch: str, tmp_path) -> None:
    m, result, data = _train(arch)
    l2 = result.history["l2"].to_numpy()
    assert l2[-5:].mean() < 0.5 * l2[:5].mean(), f"{arch} did not learn: {l2[:5]} → {l2[-5:]}"
    x = data[:100]
    s = m.sparsity(x)
    assert s.shape == (100,) and (s >= 0).all() and s.max() > 0
    m2, _, _ = _train(arch)
    for name, t in m.state_dict().items():
        assert torch.equal(t, m2.state_dict()[name]), f"{arch}: {name} differs between seeded runs"
    save_sae(m, tmp_path / arch)
    loaded = load_sae(tmp_path / arch)
    assert type(loaded) is type(m)
    for name, t in m.state_dict().items():
        assert torch.equal(t, loaded.state_dict()[name]), f"{arch}: {name} did not round-trip"
    torch.testing.assert_close(loaded.encode(x), m.encode(x), atol=0, rtol=0)
    torch.testing.assert_close(loaded.sparsity(x), s, atol=0, rtol=0)


def test_buffers_that_define_inference_round_trip(tmp_path) -> None:
    fc, _, _ = _train("feature_choice", steps=20)
    assert isinstance(fc, FeatureChoiceSAE) and (fc.threshold >= 0).any()
    tree, _, _ = _train("tree", steps=20)
    assert (tree.parent[8:] >= 0).any()
    mat, _, _ = _train("matryoshka", steps=20)
    assert isinstance(mat, MatryoshkaSAE) and float(mat.threshold) > 0
    for name, m in (("fc", fc), ("tree", tree), ("mat", mat)):
        loaded = load_sae(save_sae(m, tmp_path / name))
        for buf in ("threshold", "parent", "since_fired"):
            if hasattr(m, buf):
                assert torch.equal(getattr(loaded, buf), getattr(m, buf))
