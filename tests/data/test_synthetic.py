"""Tests for softsae_lib.data.synthetic.manifold_mixture (ground truth for "k̂ ∝ LID")."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import skdim
import torch
from scipy.stats import spearmanr

from softsae_lib.data.synthetic import ManifoldMixture, manifold_mixture

DIMS = (1, 2, 4, 8, 16, 32)


pytestmark = pytest.mark.usefixtures("single_thread")


def _offsets(mm: ManifoldMixture, clean: bool = True) -> torch.Tensor:
    x = mm.x_clean if clean else mm.x
    return x.double() - mm.centres.double()[mm.manifold_id]


def test_shapes_dtypes_and_ground_truth_alignment() -> None:
    mm = manifold_mixture(600, 70, seed=3)
    assert mm.x.shape == mm.x_clean.shape == (600, 70)
    assert mm.x.dtype == mm.x_clean.dtype == torch.float32
    assert mm.intrinsic_dim.shape == mm.manifold_id.shape == (600,)
    assert mm.intrinsic_dim.dtype == mm.manifold_id.dtype == mm.dims.dtype == torch.long
    assert mm.latents.shape == (600, max(DIMS)) and mm.latents.dtype == torch.float32
    assert mm.centres.shape == (len(DIMS), 70) and mm.n_manifolds == len(DIMS)
    assert mm.dims.tolist() == list(DIMS)
    assert [tuple(b.shape) for b in mm.bases] == [(70, d) for d in DIMS]
    assert torch.equal(mm.intrinsic_dim, mm.dims[mm.manifold_id])
    # latents are zero-padded beyond each sample's own dimension
    pad = torch.arange(max(DIMS)) >= mm.intrinsic_dim[:, None]
    assert torch.all(mm.latents[pad] == 0)
    # shuffled: manifolds are interleaved, not in blocks
    assert (mm.manifold_id[1:] != mm.manifold_id[:-1]).float().mean() > 0.5


def test_determinism_seeds_and_sample_seed() -> None:
    a, b = manifold_mixture(300, 40, seed=7), manifold_mixture(300, 40, seed=7)
    for f in ("x", "x_clean", "intrinsic_dim", "manifold_id", "latents", "centres"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    c = manifold_mixture(300, 40, seed=8)
    assert not torch.allclose(a.x, c.x) and not torch.allclose(a.centres, c.centres)
    # sample_seed: same manifolds (geometry), fresh samples
    d = manifold_mixture(300, 40, seed=7, sample_seed=123)
    assert torch.equal(a.centres, d.centres)
    assert all(torch.equal(p, q) for p, q in zip(a.bases, d.bases, strict=True))
    assert not torch.allclose(a.x, d.x)


def test_common_random_numbers_across_curvature_and_noise() -> None:
    flat = manifold_mixture(240, 48, intrinsic_dims=(2, 8), noise=0.0, seed=4)
    bent = manifold_mixture(240, 48, intrinsic_dims=(2, 8), curvature=1.5, noise=0.0, seed=4)
    noisy = manifold_mixture(240, 48, intrinsic_dims=(2, 8), noise=0.1, seed=4)
    assert torch.equal(flat.centres, bent.centres) and torch.equal(flat.manifold_id, bent.manifold_id)
    for m, d in enumerate((2, 8)):
        torch.testing.assert_close(bent.bases[m][:, :d], flat.bases[m], atol=1e-5, rtol=0)
    # curvature only rescales the latents (per manifold)
    ratio = bent.latent_scale / flat.latent_scale
    torch.testing.assert_close(bent.latents.double(), flat.latents.double() * ratio[flat.manifold_id, None],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(noisy.x_clean, flat.x_clean)
    assert not torch.allclose(noisy.x, flat.x)


def test_counts_per_manifold() -> None:
    mm = manifold_mixture(1003, 40, seed=0)
    assert mm.counts.tolist() == [168, 167, 167, 167, 167, 167]
    assert mm.counts.tolist() == [int((mm.intrinsic_dim == d).sum()) for d in DIMS]
    mm = manifold_mixture(100, 40, intrinsic_dims=(3, 5, 1), samples_per_manifold=(10, 0, 90), seed=0)
    assert mm.counts.tolist() == [10, 0, 90]
    assert torch.all(mm.intrinsic_dim[mm.manifold_id == 2] == 1)


def test_centres_equal_norm_orthogonal_and_bases_orthonormal() -> None:
    mm = manifold_mixture(60, 72, curvature=0.5, separation=3.0, radius=2.0, seed=2)
    c = mm.centres.double()
    torch.testing.assert_close(c.norm(dim=1), torch.full((6,), 6.0, dtype=torch.float64))
    torch.testing.assert_close(c @ c.T, 36.0 * torch.eye(6, dtype=torch.float64), atol=1e-4, rtol=0)
    for m, b in enumerate(mm.bases):
        b = b.double()
        torch.testing.assert_close(b.T @ b, torch.eye(b.shape[1], dtype=torch.float64), atol=1e-5, rtol=0)
        assert float((c[m] @ b).abs().max()) < 1e-4  # each manifold's span is ⊥ its own centre


def test_norm_confound_removed() -> None:
    mm = manifold_mixture(12000, 64, noise=0.01, seed=0)
    r2 = (_offsets(mm) ** 2).sum(1)
    per_dim = torch.stack([r2[mm.manifold_id == m].mean() for m in range(6)])
    assert torch.all((per_dim - 1.0).abs() < 0.05), per_dim  # E‖x − c‖² = radius² = 1 for every d
    norms = mm.x.double().norm(dim=1)
    mean_norm = torch.stack([norms[mm.manifold_id == m].mean() for m in range(6)])
    assert float(mean_norm.max() / mean_norm.min()) < 1.005, mean_norm
    # Population value ≈ 0.09 for uniform latents: low-d manifolds have a wider spread of ‖u‖ (the
    # irreducible second-order cue, see the docstring); the naive construction gives ≈ 0.9.
    rho = spearmanr(norms.numpy(), mm.intrinsic_dim.numpy())[0]
    assert abs(rho) < 0.12, rho
    # The same check detects the confound in the naive construction (unit-variance latent coordinates).
    z = mm.latents.double() / mm.latent_scale[mm.manifold_id, None]
    naive = torch.empty_like(mm.x, dtype=torch.float64)
    for m, d in enumerate(DIMS):
        idx = mm.manifold_id == m
        naive[idx] = mm.centres[m].double() + z[idx, :d] @ mm.bases[m].double().T
    assert spearmanr(naive.norm(dim=1).numpy(), mm.intrinsic_dim.numpy())[0] > 0.8


def test_norm_confound_removed_with_curvature() -> None:
    mm = manifold_mixture(12000, 64, curvature=2.0, noise=0.0, seed=1)
    r2 = (_offsets(mm) ** 2).sum(1)
    per_dim = torch.stack([r2[mm.manifold_id == m].mean() for m in range(6)])
    assert torch.all((per_dim - 1.0).abs() < 0.06), per_dim
    means = torch.stack([_offsets(mm)[mm.manifold_id == m].mean(0).norm() for m in range(6)])
    assert torch.all(means < 0.1), means  # the lift is centred: E x = centre


def test_equal_norm_option() -> None:
    mm = manifold_mixture(1200, 72, curvature=1.0, noise=0.0, equal_norm=True, seed=0)
    norms = mm.x_clean.double().norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, (4.0**2 + 1) ** 0.5), atol=1e-5, rtol=1e-5)
    noisy = manifold_mixture(6000, 64, noise=0.01, equal_norm=True, seed=0)
    rho = spearmanr(noisy.x.norm(dim=1).numpy(), noisy.intrinsic_dim.numpy())[0]
    assert abs(rho) < 0.05, rho


def test_flat_manifolds_lie_in_their_affine_span_with_exact_rank() -> None:
    mm = manifold_mixture(1200, 64, noise=0.0, curvature=0.0, seed=5)
    off = _offsets(mm)
    for m, d in enumerate(DIMS):
        o = off[mm.manifold_id == m][:200]
        b = mm.bases[m].double()
        resid = o - (o @ b) @ b.T
        assert float(resid.norm(dim=1).max()) < 1e-5
        s = torch.linalg.svdvals(o - o.mean(0))
        assert int((s > 1e-4 * s[0]).sum()) == d, (d, s[: d + 2])
        # embed() reproduces the stored points from the stored latents
        idx = mm.manifold_id == m
        torch.testing.assert_close(mm.embed(m, mm.latents[idx, :d]), mm.x_clean[idx])


def test_curved_manifolds_leave_the_flat_span_but_stay_in_the_lifted_one() -> None:
    mm = manifold_mixture(800, 40, intrinsic_dims=(2, 8), curvature=1.0, noise=0.0, seed=6)
    off = _offsets(mm)
    for m, d in enumerate((2, 8)):
        o = off[mm.manifold_id == m]
        b = mm.bases[m].double()
        assert b.shape[1] == 2 * d
        assert float((o - (o @ b) @ b.T).norm(dim=1).max()) < 1e-5
        flat = b[:, :d]
        assert float((o - (o @ flat) @ flat.T).norm(dim=1).mean()) > 0.1
        idx = mm.manifold_id == m
        torch.testing.assert_close(mm.embed(m, mm.latents[idx, :d]), mm.x_clean[idx])


@pytest.mark.parametrize("kwargs", [dict(curvature=0.0), dict(curvature=1.3),
                                    dict(curvature=1.3, equal_norm=True)])
def test_tangent_basis_matches_jacobian(kwargs: dict) -> None:
    mm = manifold_mixture(40, 24, intrinsic_dims=(3, 5), noise=0.0, seed=9, **kwargs)
    for i in range(4):
        m, d = int(mm.manifold_id[i]), int(mm.intrinsic_dim[i])
        u = mm.latents[i, :d].double()
        jac = torch.autograd.functional.jacobian(lambda v, m=m: mm.embed(m, v[None])[0], u)  # (D, d)
        t = mm.tangent_basis(i).double()
        assert t.shape == (24, d)
        torch.testing.assert_close(t.T @ t, torch.eye(d, dtype=torch.float64), atol=1e-5, rtol=0)
        assert float((jac - t @ (t.T @ jac)).norm() / jac.norm()) < 1e-5  # same span
        assert torch.linalg.matrix_rank(jac) == d  # immersion: the intrinsic dimension is d


@pytest.mark.parametrize("curvature", [0.0, 1.0])
def test_lid_estimates_follow_intrinsic_dimension(curvature: float) -> None:
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    est = {}
    for d in (2, 8):
        mm = manifold_mixture(2000, 32, intrinsic_dims=(d,), curvature=curvature, noise=0.0, seed=1)
        x = mm.x.double().numpy()
        est[d] = (skdim.id.MLE().fit(x).dimension_, skdim.id.TwoNN().fit(x).dimension_)
    for k in range(2):
        assert est[2][k] < est[8][k]
        assert 2 / 1.5 < est[2][k] < 2 * 1.5 and 8 / 1.5 < est[8][k] < 8 * 1.5, est


def test_noise_raises_apparent_lid_at_small_scales() -> None:
    clean = manifold_mixture(1500, 32, intrinsic_dims=(2,), noise=0.0, seed=1)
    noisy = manifold_mixture(1500, 32, intrinsic_dims=(2,), noise=0.05, seed=1)
    lid = [skdim.id.TwoNN().fit(m.x.double().numpy()).dimension_ for m in (clean, noisy)]
    assert lid[0] < 3 and lid[1] > 2 * lid[0], lid


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(ambient_dim=20), r"ambient_dim=20 .* 32 intrinsic dimensions = 32"),
    (dict(ambient_dim=40, curvature=0.5),
     r"ambient_dim=40 .* 32 intrinsic \+ 32 curvature-lift dimensions = 64"),
    (dict(ambient_dim=32, equal_norm=True), r"ambient_dim=32 .* 32 intrinsic \+ 1 radial dimensions = 33"),
    (dict(samples_per_manifold=(50, 50)), r"6 non-negative ints summing to n_samples=100, got \(50, 50\)"),
    (dict(samples_per_manifold=(10, 10, 10, 10, 10, 40)), r"summing to n_samples=100"),
    (dict(intrinsic_dims=()), "non-empty"),
    (dict(intrinsic_dims=(2, 0)), r"positive ints, got \(2, 0\)"),
    (dict(noise=-0.1), "noise must be ≥ 0, got -0.1"),
    (dict(curvature=-1.0), "curvature must be ≥ 0"),
    (dict(separation=-1.0), "separation must be ≥ 0"),
    (dict(radius=0.0), "radius must be > 0"),
    (dict(latent="cauchy"), "latent must be one of"),
    (dict(separation=0.0, equal_norm=True), "separation > 0"),
    (dict(n_samples=0), "n_samples must be ≥ 1"),
])
def test_value_errors(kwargs: dict, match: str) -> None:
    args = dict(n_samples=100, ambient_dim=64) | kwargs
    with pytest.raises(ValueError, match=match):
        manifold_mixture(**args)


def test_gaussian_latents_and_edge_cases() -> None:
    mm = manifold_mixture(3000, 32, intrinsic_dims=(1, 32), latent="gaussian", noise=0.0, seed=0)
    r2 = (_offsets(mm) ** 2).sum(1)
    for m in range(2):
        assert abs(float(r2[mm.manifold_id == m].mean()) - 1.0) < 0.08
    # D equal to the largest dimension is allowed (that manifold spans R^D; no room to avoid its centre)
    assert manifold_mixture(10, 32, intrinsic_dims=(32,), noise=0.0).x.shape == (10, 32)
    # more manifolds than ambient dimensions: random (non-orthogonal) unit centre directions
    mm = manifold_mixture(50, 3, intrinsic_dims=(1,) * 5, separation=2.0)
    torch.testing.assert_close(mm.centres.norm(dim=1), torch.full((5,), 2.0))
    assert np.isfinite(mm.x.numpy()).all()
