"""Run-size profiles of every notebook, in one place, as typed settings.

* ``smoke``: seconds per notebook, for tests.
* ``local``: real runs on a 2-core CPU, the default of ``make reproduce``.
* ``paper``: full-scale settings for a GPU.

Each notebook reads ``get_profile(<notebook name>, profile)``: a frozen dataclass whose fields are
documented in :mod:`softsae_lib.settings`, so a mistyped name fails at once (``AttributeError``, or
``TypeError`` from :meth:`Settings.replace`) instead of deep in a notebook. Papermill injects only
``profile`` and ``out_dir``; everything else comes from here.
"""

from __future__ import annotations

from softsae_lib.settings import (
    Architectures,
    ArchitecturesLM,
    LMArm,
    LMCapture,
    LMExperiment,
    ManifoldExperiment,
    ReplicatedSAE,
    SAEExperiment,
    Settings,
    SoftTopKDemo,
    SyntheticManifolds,
    ViTExperiment,
    ViTNotebook,
    ZipfArm,
)

PROFILES = ("smoke", "local", "paper")


# Residual stream after one block of a causal LM. smoke: a random-init GPT-2-architecture model (a
# code-path check, not GPT-2); local: SmolLM2-135M (quantised GGUF from PyPI) on the offline text;
# paper: GPT-2 small from the hub. Clusters for the bootstrap are documents.
_TINY_GPT2 = dict(n_layer=2, n_embd=32, n_head=2, n_positions=64)

EXPERIMENTS: dict[str, dict[str, Settings]] = {
    "01_soft_topk": {
        "smoke": SoftTopKDemo(n=24, k=5.3, alphas=(1.0, 0.3, 0.1, 0.01)),
        "local": SoftTopKDemo(n=40, k=7.3, alphas=(1.0, 0.3, 0.1, 0.03, 0.01)),
        "paper": SoftTopKDemo(n=40, k=7.3, alphas=(1.0, 0.3, 0.1, 0.03, 0.01)),
    },
    "02_synthetic_manifolds": {
        "smoke": SyntheticManifolds(n_train=6000, n_test=1500, ambient_dim=48, dict_size=128, k=8, steps=200,
                                    batch_size=256, lr=3e-3, n_boot=200, sup_n_train=4000, sup_n_test=1000,
                                    sup_d=16, sup_features=32, sup_max_active=6, sup_dict_size=64, sup_k=3,
                                    seeds=(0, 1), sub_dims=(1, 2, 4, 8), sub_n_train=3000, sub_n_test=800,
                                    sub_dict_size=64, sub_k=4, max_atoms=16, capacity_steps=100,
                                    ablations=("twice_the_steps", "official_dead_rule"), lid_ks=(10,),
                                    lid_ns=(500,), progress=False),
        "local": SyntheticManifolds(n_train=60000, n_test=7500, ambient_dim=64, dict_size=128, k=10,
                                    steps=16000, batch_size=512, lr=3e-3, sup_n_train=65536, sup_n_test=8192,
                                    sup_d=64, sup_features=256, sup_max_active=16, sup_dict_size=256,
                                    sup_k=8, seeds=(0, 1, 2), workers=2, sub_n_train=48000, sub_n_test=8000,
                                    sub_dict_size=256, sub_k=8,
                                    # twice_the_steps: does the result survive a longer run (issue 12)?
                                    ablations=("twice_the_steps", "alpha_annealed", "k_max_4k",
                                               "no_hard_phase", "official_dead_rule"),
                                    lid_ks=(10, 20, 50), lid_ns=(1000, 3000, 7500), progress=False),
        "paper": SyntheticManifolds(intrinsic_dims=(1, 2, 4, 8, 16, 32), n_train=2_000_000, n_test=65536,
                                    ambient_dim=256, dict_size=8192, k=32, steps=40000, batch_size=4096,
                                    lr=6e-4, sup_n_train=2_000_000, sup_n_test=65536, sup_d=256,
                                    sup_features=2048, sup_max_active=64, sup_dict_size=4096, sup_k=32,
                                    seeds=(0, 1, 2), sub_dims=tuple(range(1, 33)), sub_n_train=1_000_000,
                                    sub_n_test=65536, sub_dict_size=4096, sub_k=16, max_atoms=64,
                                    capacity_steps=10000,
                                    ablations=("twice_the_steps", "alpha_annealed", "k_max_4k",
                                               "no_hard_phase", "long_hard_phase", "official_dead_rule"),
                                    lid_ks=(10, 20, 50, 100), lid_ns=(5000, 20000)),
    },
    # The project's own CIFAR-10 ViT (data/models/cifar10-vit): smoke trains a toy one for seconds,
    # local evaluates the shipped weights, paper runs a longer recipe on a GPU.
    "00_train_vit_cifar10": {
        "smoke": ViTNotebook(mode="train", width=32, depth=1, heads=2, mlp_ratio=2, patch=8, epochs=2,
                             batch_size=64, lr=2e-3, train_limit=512, test_limit=500, minutes=5.0, threads=1,
                             device="cpu"),
        "local": ViTNotebook(mode="evaluate", model="cifar10-vit", threads=2),
        "paper": ViTNotebook(mode="train", width=192, depth=9, heads=3, mlp_ratio=2, patch=4, epochs=200,
                             batch_size=256, lr=1e-3, train_limit=None, test_limit=None, minutes=600.0,
                             threads=8, device="cuda"),
    },
    "03_gpt2": {
        "smoke": LMExperiment(model="gpt2-random", random_config=_TINY_GPT2, layer=1, text="wikitext-2",
                              context_len=32, train_tokens=6000, test_tokens=1500, test_windows_per_doc=8,
                              dict_size=64, k_grid=(4, 8), steps=120, batch_size=128, lr=3e-3, ce_windows=8,
                              lid_n=800, lid_k=10, n_boot=100, html_windows=2, threads=1, progress=False,
                              lid_ks=(5, 10, 20), lid_ns=(300, 800), explain_n=300),
        # local: 2000 steps (1.7 epochs). At 1000, SoftSAE k = 32's k̂ spread check swung between 0.17
        # and 0.31 (limit 0.25) across rounding-level reruns; at 2000 it read 0.07 and 0.09 (seeds 0, 1).
        # One k: every claim is made at k = 32, and the k = 16 models cost 03 about 2 minutes of
        # training (589 s with them, 463 s without, in two regenerations); paper keeps the grid.
        "local": LMExperiment(model="smollm2-135m", layer=15, text="offline", context_len=128,
                              train_tokens=300_000, test_tokens=8000, dict_size=2048, k_grid=(32,),
                              steps=2000, batch_size=256, lr=1e-3, ce_windows=16, lid_n=5000, progress=False,
                              workers=2, explain_n=2000),
        "paper": LMExperiment(model="gpt2", layer=6, text="hf:HuggingFaceFW/fineweb:sample-10BT:train",
                              max_documents=200_000, context_len=128, capture_batch=64,
                              train_windows_per_doc=None, test_windows_per_doc=4, train_tokens=50_000_000,
                              test_tokens=500_000, cache_dtype="float16", stream=True, dict_size=24576,
                              k_grid=(16, 32, 64, 128), steps=12_207, batch_size=4096, lr=3e-4,
                              ce_windows=2000, lid_n=20000, lid_k=50,
                              baselines=("topk", "batch_topk", "matryoshka"), device="cuda", progress=False),
    },
    # SoftSAE vs TopK / BatchTopK / Matryoshka on ViT CLS embeddings of CIFAR-10 images; per-class
    # clusters for the bootstrap.
    "04_vit": {
        "smoke": ViTExperiment(encoder="random-tiny-vit", n_train=1500, n_test=500, dict_size=128, k=6,
                               steps=200, batch_size=256, lr=3e-3, lid_k=15, n_boot=200, grid_n=8, threads=1,
                               explain_n=300),
        "local": ViTExperiment(encoder="cifar10-vit", n_train=50000, n_test=5000, dict_size=1024, k=16,
                               steps=3000, batch_size=512, lr=1e-3, workers=2, explain_n=2000,
                               progress=False),
        "paper": ViTExperiment(encoder="google/vit-base-patch16-224", n_train=50000, n_test=10000,
                               dict_size=12288, k=32, steps=20000, batch_size=4096, lr=5e-4,
                               capture_batch=256, device="cuda"),
    },
    # Every adaptive-sparsity architecture at SoftSAE's realised mean L0, on the manifold mixture (as
    # in 02) and on an LM residual stream (as in 03). threads=1 on CPU: these matmuls are small, and
    # extra intra-op threads thrash on a shared 2-core box (None: torch's default, used on the GPU).
    "05_architectures": {
        "smoke": Architectures(n_train=2000, n_test=600, ambient_dim=32, dict_size=64, k=6, steps=80,
                               batch_size=128, lr=3e-3, n_boot=50, frontier_scales=(1.0, 2.0), threads=1,
                               progress=False,
                               real_arm=LMArm(model="gpt2-random", layer=1, text="wikitext-2",
                                              random_config=_TINY_GPT2, context_len=32, train_tokens=4000,
                                              test_tokens=1200, lid_n=600, lid_k=10, dict_size=64, k=6,
                                              steps=80, batch_size=128, lr=3e-3),
                               zipf_arm=ZipfArm(num_features=32, hidden_dim=16, n_train=2000, n_cal=500,
                                                n_test=500, dict_size=64, k=4, steps=80, batch_size=128,
                                                lr=3e-3)),
        "local": Architectures(n_train=40000, n_test=5000, ambient_dim=64, dict_size=512, k=10, steps=800,
                               batch_size=512, lr=1e-3, frontier_scales=(1.0, 2.0), threads=1, workers=2,
                               progress=False,
                               real_arm=LMArm(model="smollm2-135m", layer=15, text="offline",
                                              context_len=128, train_tokens=40000, test_tokens=4096,
                                              lid_n=3000, lid_k=20, dict_size=1024, k=16, steps=300,
                                              batch_size=256, lr=1e-3),
                               zipf_arm=ZipfArm(num_features=512, hidden_dim=64, n_train=40000, n_cal=8000,
                                                n_test=8000, dict_size=1024, k=4, steps=600, batch_size=512,
                                                lr=1e-3)),
        "paper": Architectures(intrinsic_dims=(1, 2, 4, 8, 16, 32), n_train=2_000_000, n_test=65536,
                               ambient_dim=256, dict_size=8192, k=32, steps=40000, batch_size=4096, lr=6e-4,
                               frontier_scales=(0.5, 1.0, 2.0), device="cuda", threads=None, progress=False,
                               real_arm=LMArm(model="gpt2", layer=6,
                                              text="hf:HuggingFaceFW/fineweb:sample-10BT:train",
                                              max_documents=200_000, capture_batch=64, context_len=128,
                                              train_windows_per_doc=None, test_windows_per_doc=4,
                                              train_tokens=4_000_000, test_tokens=200_000, lid_n=20000,
                                              lid_k=50, dict_size=24576, k=32, steps=20000, batch_size=4096,
                                              lr=3e-4, frontier_scales=(0.5, 1.0, 2.0)),
                               zipf_arm=ZipfArm(num_features=2048, hidden_dim=256, n_train=2_000_000,
                                                n_cal=65536, n_test=65536, dict_size=8192, k=16,
                                                steps=20000, batch_size=4096, lr=6e-4)),
    },
}


def get_profile(experiment: str, profile: str) -> Settings:
    """Settings of ``experiment`` under ``profile`` (frozen: use ``.replace(...)`` for a variant)."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; known: {sorted(EXPERIMENTS)}")
    if profile not in EXPERIMENTS[experiment]:
        raise ValueError(f"unknown profile {profile!r} for {experiment!r}; known: {list(PROFILES)}")
    return EXPERIMENTS[experiment][profile]


# The settings classes are re-exported: ``from softsae_lib.profiles import SAEExperiment`` still works.
__all__ = ["PROFILES", "EXPERIMENTS", "get_profile", "Settings", "SoftTopKDemo", "ViTNotebook",
           "SAEExperiment", "ReplicatedSAE", "ManifoldExperiment", "SyntheticManifolds", "LMCapture",
           "LMExperiment", "ViTExperiment", "LMArm", "ZipfArm", "Architectures", "ArchitecturesLM"]
