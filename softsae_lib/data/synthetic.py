"""Synthetic activations with known ground truth."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class SparseSuperposition:
    """Samples x = Σ_{i∈S} c_i f_i + noise with a per-sample number of active features |S|."""

    x: torch.Tensor
    """(N, d) samples."""
    features: torch.Tensor
    """(n_features, d) unit-norm ground-truth directions f_i."""
    codes: torch.Tensor
    """(N, n_features) non-negative true coefficients (zero off the support)."""
    n_active: torch.Tensor
    """(N,) true number of active features per sample."""


def sparse_superposition(n_samples: int, d: int, n_features: int, min_active: int = 1,
                         max_active: int = 8, noise: float = 0.01, seed: int = 0) -> SparseSuperposition:
    """F ground-truth unit directions in R^d; each sample activates a uniform number in
    [min_active, max_active] of them, chosen uniformly, with coefficients U(0.5, 1.5).

    Deterministic given ``seed``. The true active count is the "complexity" SoftSAE's k̂ should track.
    """
    if not 1 <= min_active <= max_active <= n_features:
        raise ValueError(f"need 1 ≤ min_active ≤ max_active ≤ n_features, got "
                         f"{min_active}, {max_active}, {n_features}")
    gen = torch.Generator().manual_seed(seed)
    features = torch.nn.functional.normalize(torch.randn(n_features, d, generator=gen), dim=1)
    n_active = torch.randint(min_active, max_active + 1, (n_samples,), generator=gen)
    # A random permutation per row; its first n_active entries form the support.
    order = torch.rand(n_samples, n_features, generator=gen).argsort(dim=1)
    support = torch.zeros(n_samples, n_features, dtype=torch.bool)
    support.scatter_(1, order, torch.arange(n_features).expand(n_samples, -1) < n_active.unsqueeze(1))
    coeffs = torch.rand(n_samples, n_features, generator=gen) + 0.5
    codes = coeffs * support
    x = codes @ features + noise * torch.randn(n_samples, d, generator=gen)
    return SparseSuperposition(x=x, features=features, codes=codes, n_active=n_active)



# ------------------------------------------------------------------------------------------------------------
# Mixture of manifolds of different intrinsic dimensions (ground truth for "k̂ ∝ local intrinsic dimension")
# ------------------------------------------------------------------------------------------------------------

_LATENTS = ("uniform", "gaussian")
_LIFT_OMEGA = math.pi / math.sqrt(3.0)
"""Angular frequency of the curvature lift per unit-variance latent coordinate: a uniform coordinate spans
[-√3, √3], i.e. exactly one period of the sine."""


@dataclass
class ManifoldMixture:
    """Samples from M manifolds in R^D of intrinsic dimensions d_m, with per-sample ground truth.

    Noise-free points are ``x_clean = centres[m] + bases[m] @ [u ; g_m(u)]`` where ``u ∈ R^{d_m}`` are the
    latent coordinates (``latents[:, :d_m]``) and ``g_m`` the curvature lift (absent when ``curvature == 0``);
    with ``equal_norm`` that point is then radially rescaled to norm √(‖c_m‖² + radius²).
    ``x = x_clean + noise · ε``. All per-sample tensors share the same (shuffled) order. See
    :func:`manifold_mixture` for the construction; :meth:`embed` and :meth:`tangent_basis` expose the maps.
    """

    x: torch.Tensor
    """(N, D) float32 observed samples (with noise)."""
    x_clean: torch.Tensor
    """(N, D) float32 noise-free points, exactly on their manifold."""
    intrinsic_dim: torch.Tensor
    """(N,) long, true intrinsic dimension d_m of each sample's manifold."""
    manifold_id: torch.Tensor
    """(N,) long, index m of each sample's manifold (into ``dims``, ``centres``, ``bases``)."""
    latents: torch.Tensor
    """(N, max d_m) float32 latent coordinates u, zero-padded beyond d_m."""
    dims: torch.Tensor
    """(M,) long, intrinsic dimension of each manifold."""
    centres: torch.Tensor
    """(M, D) float32 centres, each of norm ``separation · radius``; the mean of its manifold (unless
    ``equal_norm``)."""
    bases: list[torch.Tensor]
    """Per manifold a (D, d_m) (flat) or (D, 2 d_m) (curved) float32 matrix with orthonormal columns; the
    first d_m columns carry the latent coordinates, the rest the curvature lift."""
    radius: float
    """E‖x_clean − centre‖² = radius² for every manifold (exact unless ``equal_norm``)."""
    curvature: float
    noise: float
    equal_norm: bool
    latent_scale: torch.Tensor
    """(M,) float64, std of each latent coordinate: radius / √d_m, shrunk further when curved."""
    lift_weights: list[torch.Tensor]
    """Per manifold (d_m, d_m) float64 unit-norm rows w_l of the curvature lift."""
    lift_phases: list[torch.Tensor]
    """Per manifold (d_m,) float64 phases φ_l of the curvature lift."""
    lift_offsets: list[torch.Tensor]
    """Per manifold (d_m,) float64 exact means μ_l of the lift's sines (subtracted, so that E x = centre)."""

    @property
    def n_manifolds(self) -> int:
        return len(self.bases)

    @property
    def counts(self) -> torch.Tensor:
        """(M,) number of samples per manifold."""
        return torch.bincount(self.manifold_id, minlength=self.n_manifolds)

    def _target_norm(self, m: int) -> float:
        return math.sqrt(float(self.centres[m].double().norm()) ** 2 + self.radius**2)

    def embed(self, m: int, u: torch.Tensor) -> torch.Tensor:
        """Noise-free embedding of latent coordinates ``u`` (n, d_m) of manifold ``m``: (n, D)."""
        d = int(self.dims[m])
        if u.shape[-1] != d:
            raise ValueError(f"manifold {m} has intrinsic dimension {d}, got latents of width {u.shape[-1]}")
        y = u
        if self.curvature > 0:
            s = float(self.latent_scale[m])
            w, phase = self.lift_weights[m].to(u.dtype), self.lift_phases[m].to(u.dtype)
            lift = torch.sin(_LIFT_OMEGA * (u / s) @ w.T + phase) - self.lift_offsets[m].to(u.dtype)
            y = torch.cat([u, self.curvature * s * lift], dim=-1)
        x = self.centres[m].to(u.dtype) + y @ self.bases[m].to(u.dtype).T
        if self.equal_norm:
            x = x * (self._target_norm(m) / x.norm(dim=-1, keepdim=True))
        return x

    def tangent_basis(self, index: int) -> torch.Tensor:
        """(D, d_m) orthonormal basis of the tangent space of sample ``index``'s manifold at its point."""
        m = int(self.manifold_id[index])
        d = int(self.dims[m])
        basis = self.bases[m].double()
        jac = basis[:, :d]
        if self.curvature > 0:
            s = float(self.latent_scale[m])
            z = self.latents[index, :d].double() / s
            w, phase = self.lift_weights[m], self.lift_phases[m]
            # u = s z, g = κ s (sin(ω W z + φ) − μ)  ⇒  dg/du = κ ω diag(cos(ω W z + φ)) W
            dg = self.curvature * _LIFT_OMEGA * torch.cos(_LIFT_OMEGA * w @ z + phase)[:, None] * w
            jac = jac + basis[:, d:] @ dg
        if self.equal_norm:  # d(R x/‖x‖) ∝ (I − x̂ x̂ᵀ) dx
            point = self.embed(m, self.latents[index:index + 1, :d].double())
            xhat = torch.nn.functional.normalize(point, dim=1)
            jac = jac - xhat.T @ (xhat @ jac)
        return torch.linalg.qr(jac).Q.float()


def _mean_cos(a: torch.Tensor, latent: str) -> torch.Tensor:
    """E cos(a·z) for z with iid zero-mean unit-variance coordinates; a (..., d) → (...).

    Uses E cos(Σ a_j z_j) = Π_j E cos(a_j z_j) (independent, symmetric z_j)."""
    if latent == "gaussian":
        return torch.exp(-0.5 * (a**2).sum(-1))
    t = math.sqrt(3.0) * a  # z_j ~ U[-√3, √3]: E cos(a z) = sin(√3 a) / (√3 a)
    return torch.sinc(t / math.pi).prod(-1)


def _check_mixture_args(n_samples: int, ambient_dim: int, dims: list[int], curvature: float, noise: float,
                        separation: float, radius: float, latent: str, equal_norm: bool) -> None:
    """Raise ``ValueError`` for arguments :func:`manifold_mixture` cannot honour; ``dims`` the M ints d_m.

    The checks run in a fixed order, so a call with several problems always reports the same one."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be ≥ 1, got {n_samples}")
    if not dims or min(dims) < 1:
        raise ValueError(f"intrinsic_dims must be a non-empty sequence of positive ints, got {tuple(dims)}")
    if latent not in _LATENTS:
        raise ValueError(f"latent must be one of {_LATENTS}, got {latent!r}")
    for name, value in (("curvature", curvature), ("noise", noise), ("separation", separation)):
        if not value >= 0:  # written so that NaN fails too
            raise ValueError(f"{name} must be ≥ 0, got {value}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    if equal_norm and not separation > 0:
        raise ValueError("equal_norm=True needs separation > 0 (the radial rescaling is about the origin)")
    d_max = max(dims)
    lift = d_max if curvature > 0 else 0
    need = d_max + lift + int(equal_norm)
    if ambient_dim < need:
        parts = [f"{d_max} intrinsic"] + [f"{lift} curvature-lift"] * bool(lift) + ["1 radial"] * equal_norm
        raise ValueError(f"ambient_dim={ambient_dim} is too small: the largest manifold needs "
                         f"{' + '.join(parts)} dimensions = {need}")


def _split_counts(n_samples: int, n_man: int, samples_per_manifold: Sequence[int] | None) -> list[int]:
    """Samples per manifold, M = ``n_man`` ints summing to ``n_samples``: ``samples_per_manifold``
    (validated), or by default an equal split whose remainder goes to the first manifolds."""
    if samples_per_manifold is None:
        q, r = divmod(n_samples, n_man)
        return [q + (i < r) for i in range(n_man)]
    counts = [int(c) for c in samples_per_manifold]
    if len(counts) != n_man or min(counts) < 0 or sum(counts) != n_samples:
        raise ValueError(f"samples_per_manifold must be {n_man} non-negative ints summing to "
                         f"n_samples={n_samples}, got {tuple(counts)}")
    return counts


@dataclass
class _Geometry:
    """The seed-determined shape of a mixture of M manifolds: everything drawn before the samples."""

    centres: torch.Tensor  # (M, D) float32
    # Per manifold: (D, d_m + lift) float32 orthonormal columns (lift = max d_m if curved, else 0) ...
    bases: list[torch.Tensor] = field(default_factory=list)
    weights: list[torch.Tensor] = field(default_factory=list)  # ... (d_m, d_m) float64 unit rows w_l
    phases: list[torch.Tensor] = field(default_factory=list)  # ... (d_m,) float64 phases φ_l
    offsets: list[torch.Tensor] = field(default_factory=list)  # ... (d_m,) float64 means μ_l of the sines
    scales: list[float] = field(default_factory=list)  # ... std of each latent coordinate


def _centre_directions(gen: torch.Generator, n_man: int, ambient_dim: int) -> torch.Tensor:
    """(M, D) float64 unit directions of the M = ``n_man`` centres in R^D, one draw from ``gen``.

    Orthonormal when M ≤ D, so that all pairwise centre distances are equal; with more manifolds than
    dimensions that is impossible and the directions are merely independent.
    """
    dirs = torch.randn(n_man, ambient_dim, generator=gen, dtype=torch.float64)
    if n_man <= ambient_dim:
        return torch.linalg.qr(dirs.T).Q.T
    return torch.nn.functional.normalize(dirs, dim=1)


def _manifold_basis(gauss: torch.Tensor, k: int, centre_dir: torch.Tensor) -> torch.Tensor:
    """(D, k) float32 orthonormal basis spanned by the first ``k`` rows of ``gauss`` (2 d_m, D) float64.

    When D > k the rows are first projected off ``centre_dir`` (D,) (a unit vector): with the span ⊥ c_m,
    ‖x_clean‖² = ‖c_m‖² + ‖x_clean − c_m‖² has no cross term, so E‖x‖² is the same for every manifold,
    and the ``equal_norm`` radial map is a diffeomorphism.
    """
    g = gauss[:k]
    if gauss.shape[1] > k:
        g = g - (g @ centre_dir)[:, None] * centre_dir
    return torch.linalg.qr(g.T).Q.float()


def _lift_moments(w: torch.Tensor, phase: torch.Tensor, latent: str) -> tuple[torch.Tensor, float]:
    """Exact moments of the lift's sines s_l = sin(ω w_l·z + φ_l) under the ``latent`` distribution of z.

    ``w`` (d, d) float64 unit rows w_l, ``phase`` (d,) float64. Returns μ (d,) float64, μ_l = E s_l
    (subtracted so that E x_clean = c_m), and Σ_l Var s_l (it sets the norm-preserving scale)."""
    mu = torch.sin(phase) * _mean_cos(_LIFT_OMEGA * w, latent)
    mean_sq = 0.5 - 0.5 * torch.cos(2 * phase) * _mean_cos(2 * _LIFT_OMEGA * w, latent)
    return mu, float((mean_sq - mu**2).sum())


def _draw_geometry(gen: torch.Generator, dims: list[int], ambient_dim: int, lift: int, separation: float,
                   radius: float, curvature: float, latent: str) -> _Geometry:
    """Centres (M, D), bases and curvature lift of the M manifolds of intrinsic dimensions ``dims``.

    Draw order on ``gen``: the centre directions, then per manifold its basis Gaussian (2 d_m, D), lift
    weights (d_m, d_m) and phases (d_m,). None of the draws depends on ``curvature``, ``separation`` or
    ``radius``, so sweeping one of them keeps the same directions.
    """
    dirs = _centre_directions(gen, len(dims), ambient_dim)
    geo = _Geometry(centres=(separation * radius * dirs).float())
    for m, d in enumerate(dims):
        # Rows 0..d-1 are drawn the same whether or not the lift rows are used, and QR's first d columns
        # depend only on the first d columns, so flat and curved versions share the flat directions.
        gauss = torch.randn(2 * d, ambient_dim, generator=gen, dtype=torch.float64)
        w = torch.nn.functional.normalize(torch.randn(d, d, generator=gen, dtype=torch.float64), dim=1)
        phase = 2 * math.pi * torch.rand(d, generator=gen, dtype=torch.float64)
        geo.bases.append(_manifold_basis(gauss, d + lift, dirs[m]))
        mu, var_lift = _lift_moments(w, phase, latent)
        # E‖[u; g]‖² = σ_d² (d + κ² Σ_l Var_l) with σ_d = radius/√d; shrink so that it equals radius².
        geo.scales.append(radius / math.sqrt(d + curvature**2 * var_lift))
        geo.weights.append(w)
        geo.phases.append(phase)
        geo.offsets.append(mu)
    return geo


def _unsampled_mixture(geo: _Geometry, dims: list[int], counts: list[int], n_samples: int, ambient_dim: int,
                       radius: float, curvature: float, noise: float, equal_norm: bool) -> ManifoldMixture:
    """A :class:`ManifoldMixture` with its geometry set and its N = ``n_samples`` samples still to draw.

    Per-sample tensors are in manifold order (``counts[m]`` rows for manifold m): ``latents`` (N, max d_m)
    zeros, ``x`` and ``x_clean`` one uninitialised (N, D) tensor, ``manifold_id`` and ``intrinsic_dim`` (N,).
    The geometry is set first because :meth:`ManifoldMixture.embed` computes the samples from it.
    """
    dims_t = torch.tensor(dims)
    manifold_id = torch.repeat_interleave(torch.arange(len(dims)), torch.tensor(counts))
    x_clean = torch.empty(n_samples, ambient_dim)
    return ManifoldMixture(x=x_clean, x_clean=x_clean, intrinsic_dim=dims_t[manifold_id],
                           manifold_id=manifold_id, latents=torch.zeros(n_samples, max(dims)), dims=dims_t,
                           centres=geo.centres, bases=geo.bases, radius=float(radius),
                           curvature=float(curvature), noise=float(noise), equal_norm=bool(equal_norm),
                           latent_scale=torch.tensor(geo.scales, dtype=torch.float64),
                           lift_weights=geo.weights, lift_phases=geo.phases, lift_offsets=geo.offsets)


def _draw_latents(gen: torch.Generator, n: int, d: int, latent: str) -> torch.Tensor:
    """(n, d) float32 z with iid zero-mean unit-variance coordinates: U[-√3, √3] or N(0, 1)."""
    if latent == "uniform":
        return math.sqrt(3.0) * (2 * torch.rand(n, d, generator=gen) - 1)
    return torch.randn(n, d, generator=gen)


def _fill_samples(out: ManifoldMixture, gen: torch.Generator, dims: list[int], counts: list[int],
                  scales: list[float], latent: str) -> None:
    """Draw each manifold's latents in turn, one (counts[m], d_m) draw on ``gen``, and write them into
    ``out.latents[:, :d_m]`` (N, max d_m) and their noise-free points into ``out.x_clean`` (N, D), in place,
    manifold m's rows after those of manifolds 0..m-1."""
    start = 0
    for m, (d, n) in enumerate(zip(dims, counts, strict=True)):
        u = scales[m] * _draw_latents(gen, n, d, latent)
        out.latents[start:start + n, :d] = u
        out.x_clean[start:start + n] = out.embed(m, u)
        start += n


def _add_noise_and_shuffle(out: ManifoldMixture, gen: torch.Generator, noise: float) -> None:
    """Set ``out.x`` = x_clean + noise · ε, ε (N, D) ~ N(0, I), and shuffle every per-sample tensor.

    The noise is drawn before the permutation (N,), both on ``gen``. One permutation for all keeps the
    ground truth aligned with ``x``, and it makes any prefix (the notebooks' train split) a random sample
    of every manifold."""
    x_clean = out.x_clean
    eps = torch.randn(*x_clean.shape, generator=gen)
    perm = torch.randperm(x_clean.shape[0], generator=gen)
    out.x = (x_clean + noise * eps)[perm]
    out.x_clean = x_clean[perm]
    out.latents = out.latents[perm]
    out.manifold_id = out.manifold_id[perm]
    out.intrinsic_dim = out.intrinsic_dim[perm]


def manifold_mixture(n_samples: int, ambient_dim: int, intrinsic_dims: Sequence[int] = (1, 2, 4, 8, 16, 32),
                     curvature: float = 0.0, noise: float = 0.01,
                     samples_per_manifold: Sequence[int] | None = None, separation: float = 4.0,
                     radius: float = 1.0, latent: str = "uniform", equal_norm: bool = False, seed: int = 0,
                     sample_seed: int | None = None) -> ManifoldMixture:
    """Mixture of M = len(intrinsic_dims) manifolds of intrinsic dimensions d_m embedded in R^D.

    Construction, for manifold m with d = d_m:

    * **Latents.** z ∈ R^d with iid zero-mean unit-variance coordinates: ``latent="uniform"`` (default) draws
      z_j ~ U[-√3, √3] (a cube: constant density, but boundaries, which bias kNN LID estimators low),
      ``"gaussian"`` draws z_j ~ N(0, 1) (no boundary, varying density). The latent coordinates are
      u = σ_d z with σ_d = radius / √d.
    * **No norm confound.** A naive cube/Gaussian has E‖u‖² ∝ d, so ‖x‖ would reveal d and a model could
      track the norm instead of the LID. With σ_d = radius / √d, E‖u‖² = radius² for every d (the
      per-coordinate extent shrinks as 1/√d; the *whole* manifold has the same RMS size). After the optional
      curvature lift the embedding is rescaled by the exact factor that restores E‖x_clean − c_m‖² = radius²,
      and the lift is centred so that E x_clean = c_m. Every centre has norm ``separation · radius``; centres
      are orthonormal directions (random QR) when M ≤ D, so all pairwise centre distances equal
      √2 · separation · radius (and the mixture is symmetric about its mean), else independent random unit
      directions. Hence E‖x‖² = (separation² + 1) radius² + D noise² for every manifold. A second-order cue
      remains: ‖u‖ concentrates as d grows (relative spread ∝ 1/√d, unavoidable for a non-singular
      d-dimensional density with fixed E‖u‖²), so low-d manifolds have more spread-out norms and, by Jensen,
      a slightly smaller mean ‖x‖; the rank correlation of ‖x‖ with d stays ≈ 0.1 for uniform latents
      (≈ 0.2 for Gaussian ones) instead of ≈ 0.9 for the naive construction. ``equal_norm=True`` removes
      even that: each noise-free point is rescaled radially to norm √(‖c_m‖² + radius²). Because every basis
      is orthogonal to its own centre, that radial map is a diffeomorphism of the manifold onto its image
      (all points share the component ‖c_m‖ along c_m, tangent vectors are ⊥ c_m), so d is unchanged; the
      price is extra curvature 1/√(‖c_m‖² + radius²) and E‖x_clean − c_m‖² only ≈ radius². Needs
      separation > 0 and D ≥ (the dimensions below) + 1.
    * **Embedding.** A random isometry: ``bases[m]`` = orthonormal columns from the QR of a Gaussian D × k
      matrix, drawn independently per manifold and, when D > k, within the orthogonal complement of its own
      centre (spans of different manifolds generally overlap; manifolds are kept apart by their centres).
      x_clean = c_m + B_m [u ; g(u)].
    * **Curvature** (``curvature = κ > 0``): the latents are lifted into d more dimensions by the graph map
      u ↦ (u, g(u)), g_l(u) = κ σ_d (sin(ω w_l·z + φ_l) − μ_l), l = 1..d, with random unit w_l ∈ R^d
      (non-orthogonal, so the surface is genuinely curved and not a product of planar curves), random phases
      φ_l, ω = π/√3 (one full period across a uniform coordinate) and μ_l = E sin(ω w_l·z + φ_l) computed
      exactly. A graph of a smooth map is an embedding, so the intrinsic dimension stays exactly d; κ is the
      bending amplitude relative to the per-coordinate extent (scale-free: the same shape for every d, so
      the absolute curvature grows like √d). Requires D ≥ 2 max d_m.
    * **Noise.** x = x_clean + noise · ε, ε ~ N(0, I_D) isotropic in the ambient space. Noise makes the
      data D-dimensional at small scales: below roughly noise · √(2D) (the typical distance between two
      noisy copies of one point) any LID estimator sees the ambient dimension, so compare k̂ with d_m only
      at scales well above that (or use ``noise=0`` / ``x_clean``).

    ``samples_per_manifold`` (length M, summing to ``n_samples``) defaults to an equal split (the remainder
    goes to the first manifolds). The sample order is shuffled; all ground truth is aligned with ``x``.

    Deterministic given ``seed``. The geometry (centres, bases, lift) is drawn first from ``seed``; the
    samples (latents, noise, shuffle) follow from the same generator, or from ``sample_seed`` if given, so
    ``sample_seed`` gives fresh samples (e.g. a test split) of the *same* manifolds. The random draws do not
    depend on ``curvature``, ``noise``, ``separation``, ``radius`` or ``equal_norm`` (except whether a basis
    has room to avoid its centre), so sweeping one of them reuses the same directions and latents.
    """
    dims = [int(d) for d in intrinsic_dims]
    _check_mixture_args(n_samples, ambient_dim, dims, curvature, noise, separation, radius, latent,
                        equal_norm)
    counts = _split_counts(n_samples, len(dims), samples_per_manifold)
    gen = torch.Generator().manual_seed(seed)
    lift = max(dims) if curvature > 0 else 0
    geo = _draw_geometry(gen, dims, ambient_dim, lift, separation, radius, curvature, latent)
    # The samples continue the geometry's generator unless a separate stream was asked for.
    gen_s = gen if sample_seed is None else torch.Generator().manual_seed(sample_seed)
    out = _unsampled_mixture(geo, dims, counts, n_samples, ambient_dim, radius, curvature, noise, equal_norm)
    _fill_samples(out, gen_s, dims, counts, geo.scales, latent)
    _add_noise_and_shuffle(out, gen_s, noise)
    return out
