"""Run-size profiles of every notebook, in one place.

* ``smoke``: seconds per notebook, for tests.
* ``local``: real runs on a 2-core CPU, the default of ``make reproduce``.
* ``paper``: full-scale settings for a GPU.

Each notebook reads ``get_profile(<notebook name>, profile)``.
"""

from __future__ import annotations

PROFILES = ("smoke", "local", "paper")

# alpha_anneal_fraction None: SoftSAE trains at α = 1e-4 from the first step (official CLIP config).
# Annealing α from 1 over 20% of the steps collapsed k̂ to its lower clamp on this data (see the
# closing note of the synthetic-manifold issue and notebook 02).
_SYNTH_COMMON = dict(intrinsic_dims=(1, 2, 4, 8, 16), manifolds_per_dim=3, curvature=0.5, noise=0.01,
                     lid_k=20, n_boot=1000, seed=0, alpha_anneal_fraction=None)

EXPERIMENTS: dict[str, dict[str, dict]] = {
    "01_soft_topk": {
        "smoke": dict(n=24, k=5.3, alphas=(1.0, 0.3, 0.1, 0.01), seed=0),
        "local": dict(n=40, k=7.3, alphas=(1.0, 0.3, 0.1, 0.03, 0.01), seed=0),
        "paper": dict(n=40, k=7.3, alphas=(1.0, 0.3, 0.1, 0.03, 0.01), seed=0),
    },
    "02_synthetic_manifolds": {
        "smoke": dict(_SYNTH_COMMON, n_train=6000, n_test=1500, ambient_dim=48, dict_size=128, k=8,
                      steps=300, batch_size=256, lr=3e-3, n_boot=200,
                      sup_n_train=4000, sup_n_test=1000, sup_d=16, sup_features=32, sup_max_active=6,
                      sup_dict_size=64, sup_k=3),
        "local": dict(_SYNTH_COMMON, n_train=60000, n_test=7500, ambient_dim=64, dict_size=1024, k=10,
                      steps=4000, batch_size=512, lr=1e-3,
                      sup_n_train=65536, sup_n_test=8192, sup_d=64, sup_features=256, sup_max_active=16,
                      sup_dict_size=512, sup_k=8),
        "paper": dict(_SYNTH_COMMON, intrinsic_dims=(1, 2, 4, 8, 16, 32), n_train=2_000_000, n_test=65536,
                      ambient_dim=256, dict_size=8192, k=32, steps=40000, batch_size=4096, lr=6e-4,
                      sup_n_train=2_000_000, sup_n_test=65536, sup_d=256, sup_features=2048,
                      sup_max_active=64, sup_dict_size=4096, sup_k=32),
    },
}


def get_profile(experiment: str, profile: str) -> dict:
    """Parameters of ``experiment`` under ``profile`` (a copy)."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; known: {sorted(EXPERIMENTS)}")
    if profile not in EXPERIMENTS[experiment]:
        raise ValueError(f"unknown profile {profile!r} for {experiment!r}; known: {list(PROFILES)}")
    return dict(EXPERIMENTS[experiment][profile])
