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
# synthetic-manifold results in notebook 02).
_SYNTH_COMMON = dict(intrinsic_dims=(1, 2, 4, 8, 16), manifolds_per_dim=3, curvature=0.5, noise=0.01,
                     lid_k=20, n_boot=1000, seed=0, alpha_anneal_fraction=None)

# Residual stream after one block of a causal LM. smoke: a random-init GPT-2-architecture model (a
# code-path check, not GPT-2); local: SmolLM2-135M (quantised GGUF from PyPI) on the offline text;
# paper: GPT-2 small from the hub. Clusters for the bootstrap are documents.
_LM_COMMON = dict(held_out_fraction=0.1, capture_batch=8, outlier_factor=10.0, train_windows_per_doc=8,
                  test_windows_per_doc=2, cache_dtype="float32", stream=False, random_config=None,
                  max_documents=None, baselines=("topk", "batch_topk"), alpha_anneal_fraction=None,
                  lid_k=20, n_boot=1000, html_windows=4, device=None, threads=None, progress=False, seed=0)

# CLS embeddings at the final LayerNorm ("pooled"); images from the offline CIFAR-10 tarball; per-class
# clusters for the bootstrap. Matryoshka joins the baselines (trained at the same matched k).
_VIT_COMMON = dict(images="cifar10", layer="pooled", capture_batch=250, lid_k=20, n_boot=1000, grid_n=16,
                   baselines=("topk", "batch_topk", "matryoshka"), alpha_anneal_fraction=None, device=None,
                   threads=None, seed=0)  # threads None: torch's default

# Notebook 05: every adaptive-sparsity architecture at SoftSAE's realised mean L0, on the synthetic
# manifold mixture (as in 02) and on an LM residual stream (as in 03; real_arm None skips that arm,
# whose keys override the synthetic ones). frontier_scales: extra budgets (× the matched one).
_ARCHS_05 = ("soft", "topk", "batch_topk", "matryoshka", "feature_choice", "mutual_choice",
             "sparsemax_attention", "tree")
_ARCH_COMMON = dict(_SYNTH_COMMON, archs=_ARCHS_05, calibration_batches=8, sparsemax_match=True,
                    frontier_scales=(1.0,), threads=1, progress=False)
# threads=1 on CPU: these matmuls are small, and extra intra-op threads thrash on a shared 2-core box
# (None: torch's default, used on the GPU).
_LM_ARM = dict(kind="lm", held_out_fraction=0.1, capture_batch=8, outlier_factor=10.0,
               train_windows_per_doc=8, test_windows_per_doc=2, random_config=None, max_documents=None,
               frontier_scales=(1.0,))

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
    # The project's own CIFAR-10 ViT (data/models/cifar10-vit): smoke trains a toy one for seconds,
    # local evaluates the shipped weights, paper runs a longer recipe on a GPU.
    "00_train_vit_cifar10": {
        "smoke": dict(mode="train", width=32, depth=1, heads=2, mlp_ratio=2, patch=8, epochs=2, batch_size=64,
                      lr=2e-3, train_limit=512, test_limit=500, minutes=5.0, threads=1, device="cpu", seed=0),
        "local": dict(mode="evaluate", model="cifar10-vit", threads=2, seed=0),
        "paper": dict(mode="train", width=192, depth=9, heads=3, mlp_ratio=2, patch=4, epochs=200,
                      batch_size=256, lr=1e-3, train_limit=None, test_limit=None, minutes=600.0, threads=8,
                      device="cuda", seed=0),
    },
    "03_gpt2": {
        "smoke": dict(_LM_COMMON, model="gpt2-random", random_config=dict(n_layer=2, n_embd=32, n_head=2,
                      n_positions=64), layer=1, text="wikitext-2", context_len=32, train_tokens=6000,
                      test_tokens=1500, test_windows_per_doc=8, dict_size=64, k_grid=(4, 8), steps=120,
                      batch_size=128, lr=3e-3, ce_windows=8, lid_n=800, lid_k=10, n_boot=100, html_windows=2,
                      threads=1),
        "local": dict(_LM_COMMON, model="smollm2-135m", layer=15, text="offline", context_len=128,
                      train_tokens=200_000, test_tokens=8000, dict_size=2048, k_grid=(16, 32), steps=300,
                      batch_size=512, lr=1e-3, ce_windows=16, lid_n=5000),
        "paper": dict(_LM_COMMON, model="gpt2", layer=6, text="hf:HuggingFaceFW/fineweb:sample-10BT:train",
                      max_documents=200_000, context_len=128, capture_batch=64, train_windows_per_doc=None,
                      test_windows_per_doc=4, train_tokens=50_000_000, test_tokens=500_000,
                      cache_dtype="float16", stream=True, dict_size=24576, k_grid=(16, 32, 64, 128),
                      steps=12_207, batch_size=4096, lr=3e-4, ce_windows=2000, lid_n=20000, lid_k=50,
                      baselines=("topk", "batch_topk", "matryoshka"), device="cuda"),
    },
    # SoftSAE vs TopK / BatchTopK / Matryoshka on ViT CLS embeddings of CIFAR-10 images.
    "04_vit": {
        "smoke": dict(_VIT_COMMON, encoder="random-tiny-vit", n_train=1500, n_test=500, dict_size=128, k=6,
                      steps=200, batch_size=256, lr=3e-3, lid_k=15, n_boot=200, grid_n=8, threads=1),
        "local": dict(_VIT_COMMON, encoder="cifar10-vit", n_train=30000, n_test=5000, dict_size=1024, k=16,
                      steps=2000, batch_size=512, lr=1e-3),
        "paper": dict(_VIT_COMMON, encoder="google/vit-base-patch16-224", n_train=50000, n_test=10000,
                      dict_size=12288, k=32, steps=20000, batch_size=4096, lr=5e-4, capture_batch=256,
                      device="cuda"),
    },
    "05_architectures": {
        "smoke": dict(_ARCH_COMMON, n_train=2000, n_test=600, ambient_dim=32, dict_size=64, k=6, steps=80,
                      batch_size=128, lr=3e-3, n_boot=50, frontier_scales=(1.0, 2.0),
                      real_arm=dict(_LM_ARM, model="gpt2-random", layer=1, text="wikitext-2",
                                    random_config=dict(n_layer=2, n_embd=32, n_head=2, n_positions=64),
                                    context_len=32, train_tokens=4000, test_tokens=1200, lid_n=600, lid_k=10,
                                    dict_size=64, k=6, steps=80, batch_size=128, lr=3e-3)),
        "local": dict(_ARCH_COMMON, n_train=40000, n_test=5000, ambient_dim=64, dict_size=512, k=10,
                      steps=800, batch_size=512, lr=1e-3, frontier_scales=(1.0, 2.0),
                      real_arm=dict(_LM_ARM, model="smollm2-135m", layer=15, text="offline", context_len=128,
                                    train_tokens=40000, test_tokens=4096, lid_n=3000, lid_k=20,
                                    dict_size=1024, k=16, steps=300, batch_size=256, lr=1e-3)),
        "paper": dict(_ARCH_COMMON, intrinsic_dims=(1, 2, 4, 8, 16, 32), n_train=2_000_000, n_test=65536,
                      ambient_dim=256, dict_size=8192, k=32, steps=40000, batch_size=4096, lr=6e-4,
                      frontier_scales=(0.5, 1.0, 2.0), device="cuda", threads=None,
                      real_arm=dict(_LM_ARM, model="gpt2", layer=6,
                                    text="hf:HuggingFaceFW/fineweb:sample-10BT:train",
                                    max_documents=200_000, capture_batch=64, context_len=128,
                                    train_windows_per_doc=None, test_windows_per_doc=4,
                                    train_tokens=4_000_000, test_tokens=200_000, lid_n=20000, lid_k=50,
                                    dict_size=24576, k=32, steps=20000, batch_size=4096, lr=3e-4,
                                    frontier_scales=(0.5, 1.0, 2.0))),
    },
}


def get_profile(experiment: str, profile: str) -> dict:
    """Parameters of ``experiment`` under ``profile`` (a copy)."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; known: {sorted(EXPERIMENTS)}")
    if profile not in EXPERIMENTS[experiment]:
        raise ValueError(f"unknown profile {profile!r} for {experiment!r}; known: {list(PROFILES)}")
    return dict(EXPERIMENTS[experiment][profile])
