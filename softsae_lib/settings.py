"""Typed settings of every experiment: one frozen dataclass per notebook, a one-line doc per field.

The values of each run size live in :mod:`softsae_lib.profiles`; the experiment code in
:mod:`softsae_lib.experiments` takes these dataclasses (never a dict), so a mistyped field fails at
once (``AttributeError``, or ``TypeError`` from :meth:`Settings.replace`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


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


__all__ = ["Settings", "SoftTopKDemo", "ViTNotebook", "SAEExperiment", "ReplicatedSAE", "ManifoldExperiment",
           "SyntheticManifolds", "LMCapture", "LMExperiment", "ViTExperiment", "LMArm", "ZipfArm",
           "Architectures", "ArchitecturesLM", "ARCHS_05"]
