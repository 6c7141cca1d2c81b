"""Run-size profiles of every experiment, in one place.

* ``smoke``: seconds, for tests.
* ``local``: real runs on a 2-core CPU (the default of ``make reproduce``).
* ``paper``: full-scale settings for a GPU.
"""

from __future__ import annotations

PROFILES = ("smoke", "local", "paper")

EXPERIMENTS: dict[str, dict[str, dict]] = {
    "superposition": {
        "smoke": dict(n_train=4096, n_test=1024, d=16, n_features=32, max_active=6, dict_size=64, k=3,
                      steps=150, batch_size=128, lr=3e-3, seed=0),
        "local": dict(n_train=65536, n_test=8192, d=64, n_features=256, max_active=16, dict_size=512, k=8,
                      steps=3000, batch_size=512, lr=1e-3, seed=0),
        "paper": dict(n_train=2_000_000, n_test=65536, d=256, n_features=2048, max_active=64,
                      dict_size=4096, k=32, steps=40000, batch_size=4096, lr=6e-4, seed=0),
    },
}


def get_profile(experiment: str, profile: str) -> dict:
    """Parameters of ``experiment`` under ``profile`` (a copy)."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; known: {sorted(EXPERIMENTS)}")
    if profile not in EXPERIMENTS[experiment]:
        raise ValueError(f"unknown profile {profile!r} for {experiment!r}; known: {list(PROFILES)}")
    return dict(EXPERIMENTS[experiment][profile])
