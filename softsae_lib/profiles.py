"""Run-size profiles of every notebook, in one place, as typed settings.

* ``smoke``: seconds per notebook, for tests.
* ``local``: real runs on a 2-core CPU, the default of ``make reproduce``.
* ``paper``: full-scale settings for a GPU.

Each notebook reads ``get_profile(<notebook name>, profile)``: a frozen dataclass whose fields are
documented below, so a mistyped name fails at once (``AttributeError``, or ``TypeError`` from
:meth:`Settings.replace`) instead of deep in a notebook. Papermill injects only ``profile`` and
``out_dir``; everything else comes from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

PROFILES = ("smoke", "local", "paper")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Fields every notebook has."""

    seed: int = 0
    """Seed of the data, the initialisation, the data order and the bootstrap."""

    def replace(self, **changes) -> Settings:
        """A copy with ``changes``; an unknown name is a TypeError that lists the known ones."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {sorted(unknown)}; fields: "
                            f"{sorted(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class SoftTopKDemo(Settings):
    """01_soft_topk: the LapSum operator on one sorted score vector."""

    n: int
    """Number of scores."""
    k: float
    """Target mass Σp (fractional values show the partial boundary element)."""
    alphas: tuple[float, ...]
    """Scales α to plot, from broad to sharp."""


@dataclass(frozen=True, kw_only=True)
class ViTNotebook(Settings):
    """00_train_vit_cifar10: train the project's CIFAR-10 ViT, or evaluate the shipped one."""

    mode: str
    """'train' (a ViT with the fields below) or 'evaluate' (the weights named by ``model``)."""
    model: str | None = None
    """evaluate: folder name under data/models."""
    threads: int = 1
    """torch CPU threads."""
    device: str | None = None
    """train: 'cpu' or 'cuda'."""
    width: int | None = None
    """train: hidden size."""
    depth: int | None = None
    """train: transformer layers."""
    heads: int | None = None
    """train: attention heads."""
    mlp_ratio: int | None = None
    """train: MLP hidden size / width."""
    patch: int | None = None
    """train: patch side in pixels."""
    epochs: int | None = None
    """train: cosine-schedule length in epochs."""
    batch_size: int | None = None
    """train: images per step."""
    lr: float | None = None
    """train: peak AdamW learning rate."""
    train_limit: int | None = None
    """train: a seeded random subset of this many training images (None: all)."""
    test_limit: int | None = None
    """train: evaluate on this many test images (None: all)."""
    minutes: float | None = None
    """train: wall-clock budget."""


@dataclass(frozen=True, kw_only=True)
class SAEExperiment(Settings):
    """How the SAEs of an experiment are trained and judged (read by softsae_lib.experiments)."""

    dict_size: int
    """Number of latents F."""
    k: int | None = None
    """SoftSAE's target k (the baselines then train at its realised mean L0); None where a grid sets it."""
    steps: int
    """Optimiser steps per SAE."""
    batch_size: int
    """Samples per step."""
    lr: float
    """Peak Adam learning rate."""
    alpha_anneal_fraction: float | None = None
    """SoftSAE's α anneal 1 → α over this fraction of the steps; None trains at α from the first step
    (the official CLIP config: annealing collapsed k̂ to its lower clamp on this data)."""
    baseline_k_anneal: bool = False
    """Anneal k from d for the baselines too; False (default) gives the k anneal only to architectures
    whose published recipe has it (SoftSAE): it cost TopK/BatchTopK quality (issue 18; notebook 02's
    ablation table measures it)."""
    dead_threshold: int | None = None
    """Samples without firing after which a latent is dead; None: 50 batches."""
    n_boot: int = 1000
    """Bootstrap resamples for confidence intervals."""
    lid_k: int = 20
    """Neighbourhood size K of the LID estimators."""
    device: str | None = None
    """Training device; None: CPU."""
    threads: int | None = None
    """torch CPU threads; None: torch's default."""
    progress: bool | None = None
    """Progress bars; None: only on a terminal."""


@dataclass(frozen=True, kw_only=True)
class ManifoldExperiment(SAEExperiment):
    """SAEs on a mixture of curved manifolds of known intrinsic dimension (data/synthetic.py)."""

    intrinsic_dims: tuple[int, ...] = (1, 2, 4, 8, 16)
    """Intrinsic dimensions of the manifolds."""
    manifolds_per_dim: int = 3
    """Manifolds of each dimension (the clusters of the bootstrap)."""
    curvature: float = 0.5
    """Curvature of each manifold's embedding."""
    noise: float = 0.01
    """Isotropic ambient noise."""
    n_train: int
    """Training samples."""
    n_test: int
    """Held-out samples."""
    ambient_dim: int
    """Ambient dimension D."""


@dataclass(frozen=True, kw_only=True)
class SyntheticManifolds(ManifoldExperiment):
    """02_synthetic_manifolds: the manifold mixture, and a sparse-superposition arm."""

    sup_n_train: int
    """Superposition arm: training samples."""
    sup_n_test: int
    """Superposition arm: held-out samples."""
    sup_d: int
    """Superposition arm: ambient dimension."""
    sup_features: int
    """Superposition arm: number of true features."""
    sup_max_active: int
    """Superposition arm: most true features active in one sample."""
    sup_dict_size: int
    """Superposition arm: SAE latents."""
    sup_k: int
    """Superposition arm: SoftSAE's target k."""
    seeds: tuple[int, ...] = (0,)
    """SAE seeds (initialisation and batch order) of every arm; the data keep ``seed``."""
    workers: int = 1
    """Processes that train models concurrently (one CPU thread each)."""
    baselines: tuple[str, ...] = ("topk", "batch_topk", "matryoshka")
    """Baselines trained at SoftSAE's realised mean L0 on the manifold and superposition arms."""
    sub_dims: tuple[int, ...] = tuple(range(1, 17))
    """Subspace arm: the dimensions of the linear subspaces (one subspace each)."""
    sub_n_train: int
    """Subspace arm: training samples."""
    sub_n_test: int
    """Subspace arm: held-out samples."""
    sub_dict_size: int
    """Subspace arm: SAE latents."""
    sub_k: int
    """Subspace arm: SoftSAE's target k (2k bounds k̂, so 2k ≥ the largest dimension)."""
    oracle_tolerance: float = 0.05
    """Relative error ‖x − x̂‖²/‖x‖² at which OMP counts a sample as explained (oracle, explanation length)."""
    max_atoms: int = 32
    """Longest OMP path (atoms) for the oracle, the explanation length and the allocation bound."""
    capacity_steps: int = 2000
    """Steps of the supervised k-estimator (the estimator-capacity control)."""
    ablations: tuple[str, ...] = ()
    """SoftSAE variants trained once each on the manifold arm (see experiments/synthetic.ABLATIONS)."""
    lid_ks: tuple[int, ...] = (10, 20, 50)
    """LID-estimator study: neighbourhood sizes K."""
    lid_ns: tuple[int, ...] = (1000, 3000)
    """LID-estimator study: numbers of points the estimators see."""


@dataclass(frozen=True, kw_only=True)
class LMCapture:
    """Which language model, layer and text, and how activations are captured (notebooks 03 and 05)."""

    model: str
    """A preset of activations/lm.py ('gpt2', 'gpt2-random', 'smollm2-135m', …) or a hub id."""
    layer: int
    """Residual stream after this block."""
    text: str
    """'offline', 'wikitext-2', 'gutenberg', 'hf:NAME[:CONFIG[:SPLIT]]' or a folder of .txt files."""
    context_len: int
    """Tokens per window (BOS included)."""
    train_tokens: int
    """Tokens captured for training."""
    test_tokens: int
    """Held-out tokens captured."""
    lid_n: int
    """Held-out tokens whose LID is estimated."""
    held_out_fraction: float = 0.1
    """Share of documents held out."""
    capture_batch: int = 8
    """Windows per forward pass."""
    outlier_factor: float = 10.0
    """Tokens with a norm above this multiple of the median are dropped (attention sinks)."""
    train_windows_per_doc: int | None = 8
    """Windows kept per training document (None: all)."""
    test_windows_per_doc: int = 2
    """Windows kept per held-out document."""
    random_config: dict | None = None
    """gpt2-random: the GPT-2 config of the random stand-in."""
    max_documents: int | None = None
    """Read at most this many documents (hub corpora)."""


@dataclass(frozen=True, kw_only=True)
class ReplicatedSAE(SAEExperiment):
    """SoftSAE seeds and the direct explanation-length test of notebooks 03 and 04 (issue 12)."""

    seeds: tuple[int, ...] = (0, 1)
    """SoftSAE seeds at the k the k̂ results use (reported per seed and pooled)."""
    workers: int = 1
    """Processes that train models concurrently, one thread each (1: sequentially, in the kernel)."""
    explain_n: int = 1000
    """Held-out samples whose explanation length (OMP on the TopK decoder) is measured."""
    explain_max_atoms: int | None = None
    """OMP steps; None: twice the matched budget (samples needing more are censored)."""
    explain_tolerance: float | None = None
    """Relative squared error that counts as explained; None: the median error OMP reaches at the budget."""


@dataclass(frozen=True, kw_only=True)
class LMExperiment(LMCapture, ReplicatedSAE):
    """03_gpt2: SoftSAE and the baselines on a language model's residual stream over a k grid."""

    k_grid: tuple[int, ...]
    """SoftSAE target k values (an L0 frontier)."""
    baselines: tuple[str, ...] = ("topk", "batch_topk")
    """Baselines trained at SoftSAE's realised mean L0."""
    cache_dtype: str = "float32"
    """dtype of the activation cache."""
    stream: bool = False
    """Stream training batches from the cache instead of loading it (paper scale)."""
    ce_windows: int
    """Held-out windows for CE-loss recovered."""
    html_windows: int = 4
    """Windows rendered as k̂-shaded HTML."""
    lid_ks: tuple[int, ...] = (10, 20, 50, 100)
    """LID-estimator study: neighbourhood sizes K."""
    lid_ns: tuple[int, ...] = (1000, 2500, 5000)
    """LID-estimator study: nested subsample sizes N (capped at lid_n)."""


@dataclass(frozen=True, kw_only=True)
class ViTExperiment(ReplicatedSAE):
    """04_vit: SoftSAE and the baselines on ViT CLS embeddings of CIFAR-10."""

    encoder: str
    """'random-tiny-vit' (a stand-in), a folder under data/models, or a hub id."""
    images: str = "cifar10"
    """Image source."""
    layer: int | str = "pooled"
    """'pooled' (CLS after the final LayerNorm) or a hidden-state index."""
    n_train: int
    """Training images (stratified by class)."""
    n_test: int
    """Held-out images (stratified by class)."""
    capture_batch: int = 250
    """Images per encoder forward pass."""
    grid_n: int = 16
    """Images in each lowest/highest-k̂ grid."""
    baselines: tuple[str, ...] = ("topk", "batch_topk", "matryoshka")
    """Baselines trained at SoftSAE's realised mean L0."""


ARCHS_05 = ("soft", "topk", "batch_topk", "matryoshka", "feature_choice", "mutual_choice",
            "sparsemax_attention", "tree")


@dataclass(frozen=True, kw_only=True)
class LMArm(LMCapture):
    """05's language-model arm: the capture, and the SAE settings that differ from the synthetic arm."""

    dict_size: int
    """Number of latents F."""
    k: int
    """SoftSAE's target k."""
    steps: int
    """Optimiser steps per SAE."""
    batch_size: int
    """Samples per step."""
    lr: float
    """Peak Adam learning rate."""
    lid_k: int = 20
    """Neighbourhood size K of the LID estimator."""
    frontier_scales: tuple[float, ...] = (1.0,)
    """Budgets of the frontier, as multiples of the matched budget."""


@dataclass(frozen=True, kw_only=True)
class ZipfArm:
    """05's ground-truth arm: SAELens's synthetic generator (softsae_lib/experiments/ground_truth.py)."""

    num_features: int
    """True features (Zipfian firing probabilities, folded-normal magnitudes)."""
    hidden_dim: int
    """Dimension d of the data."""
    n_train: int
    """Training rows."""
    n_cal: int
    """Held-out rows that calibrate the thresholded models' inference thresholds."""
    n_test: int
    """Held-out rows every metric and correlation is measured on."""
    dict_size: int
    """Number of latents F."""
    k: int
    """SoftSAE's target k."""
    steps: int
    """Optimiser steps per SAE."""
    batch_size: int
    """Samples per step."""
    lr: float
    """Peak Adam learning rate."""


@dataclass(frozen=True, kw_only=True)
class Architectures(ManifoldExperiment):
    """05_architectures: every adaptive-sparsity SAE at SoftSAE's realised mean L0."""

    archs: tuple[str, ...] = ARCHS_05
    """Architectures compared; SoftSAE first (the others match its realised mean L0)."""
    calibration_batches: int = 8
    """Training batches that calibrate thresholded models' inference thresholds."""
    sparsemax_match: bool = True
    """Give sparsemax attention a target support equal to the matched budget."""
    k_aux_tree: int = 256
    """Tree SAE: dead latents per sample in its auxiliary loss."""
    frontier_scales: tuple[float, ...] = (1.0,)
    """Budgets of the frontier, as multiples of the matched budget."""
    real_arm: LMArm | None = None
    """The language-model arm (None skips it)."""
    zipf_arm: ZipfArm | None = None
    """The ground-truth arm on SAELens's synthetic data (None skips it)."""
    workers: int = 1
    """Processes that train the baselines and the frontier concurrently (one CPU thread each; the
    results do not depend on it)."""

    def zipf_settings(self) -> Architectures:
        """The ground-truth arm's settings: these, with the arm's sizes and SAE settings in their place."""
        if self.zipf_arm is None:
            raise ValueError("this profile has no zipf_arm")
        a = self.zipf_arm
        return dataclasses.replace(self, n_train=a.n_train, n_test=a.n_test, ambient_dim=a.hidden_dim,
                                   dict_size=a.dict_size, k=a.k, steps=a.steps, batch_size=a.batch_size,
                                   lr=a.lr, frontier_scales=(1.0,), real_arm=None, zipf_arm=None)

    def lm_settings(self) -> ArchitecturesLM:
        """The settings of the real arm: these, with the arm's fields in place of the synthetic ones."""
        if self.real_arm is None:
            raise ValueError("this profile has no real_arm")
        merged = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        merged.update({f.name: getattr(self.real_arm, f.name) for f in dataclasses.fields(self.real_arm)})
        merged["real_arm"] = None
        return ArchitecturesLM(**merged)


@dataclass(frozen=True, kw_only=True)
class ArchitecturesLM(LMCapture, Architectures):
    """05's real arm as one set of settings (see :meth:`Architectures.lm_settings`)."""


def _lm_arm(**kw) -> LMArm:
    return LMArm(**kw)


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
                                    steps=8000, batch_size=512, lr=3e-3, sup_n_train=65536, sup_n_test=8192,
                                    sup_d=64, sup_features=256, sup_max_active=16, sup_dict_size=256,
                                    sup_k=8, seeds=(0, 1, 2), workers=2, sub_n_train=48000, sub_n_test=8000,
                                    sub_dict_size=256, sub_k=8,
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
        "local": LMExperiment(model="smollm2-135m", layer=15, text="offline", context_len=128,
                              train_tokens=300_000, test_tokens=8000, dict_size=2048, k_grid=(16, 32),
                              steps=1000, batch_size=256, lr=1e-3, ce_windows=16, lid_n=5000, progress=False,
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
                               steps=2000, batch_size=512, lr=1e-3, workers=2, explain_n=2000,
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
                               real_arm=_lm_arm(model="gpt2-random", layer=1, text="wikitext-2",
                                                random_config=_TINY_GPT2, context_len=32, train_tokens=4000,
                                                test_tokens=1200, lid_n=600, lid_k=10, dict_size=64, k=6,
                                                steps=80, batch_size=128, lr=3e-3),
                               zipf_arm=ZipfArm(num_features=32, hidden_dim=16, n_train=2000, n_cal=500,
                                                n_test=500, dict_size=64, k=4, steps=80, batch_size=128,
                                                lr=3e-3)),
        "local": Architectures(n_train=40000, n_test=5000, ambient_dim=64, dict_size=512, k=10, steps=800,
                               batch_size=512, lr=1e-3, frontier_scales=(1.0, 2.0), threads=1, workers=2,
                               progress=False,
                               real_arm=_lm_arm(model="smollm2-135m", layer=15, text="offline",
                                                context_len=128, train_tokens=40000, test_tokens=4096,
                                                lid_n=3000, lid_k=20, dict_size=1024, k=16, steps=300,
                                                batch_size=256, lr=1e-3),
                               zipf_arm=ZipfArm(num_features=512, hidden_dim=64, n_train=40000, n_cal=8000,
                                                n_test=8000, dict_size=1024, k=4, steps=600, batch_size=512,
                                                lr=1e-3)),
        "paper": Architectures(intrinsic_dims=(1, 2, 4, 8, 16, 32), n_train=2_000_000, n_test=65536,
                               ambient_dim=256, dict_size=8192, k=32, steps=40000, batch_size=4096, lr=6e-4,
                               frontier_scales=(0.5, 1.0, 2.0), device="cuda", threads=None, progress=False,
                               real_arm=_lm_arm(model="gpt2", layer=6,
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


__all__ = ["PROFILES", "EXPERIMENTS", "get_profile", "Settings", "SoftTopKDemo", "ViTNotebook",
           "SAEExperiment", "ReplicatedSAE", "ManifoldExperiment", "SyntheticManifolds", "LMCapture",
           "LMExperiment", "ViTExperiment", "LMArm", "ZipfArm", "Architectures", "ArchitecturesLM"]
