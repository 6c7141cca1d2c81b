"""softsae_lib: SoftSAE (adaptive top-k sparse autoencoders) and the baselines needed to judge it.

Public API::

    from softsae_lib import SoftSAE, TopKSAE, TrainConfig, train_sae, evaluate_sae, save_sae, load_sae
"""

from softsae_lib.evaluation import evaluate_sae
from softsae_lib.io import SAEFileError, load_sae, save_sae
from softsae_lib.metrics import (
    cosine_similarity,
    explained_variance,
    feature_counts,
    feature_density,
    fvu,
    l0_per_sample,
    l0_summary,
    mse,
    norm_ratio,
    reconstruction_metrics,
    relative_reconstruction_bias,
    sparsity_metrics,
)
from softsae_lib.ops import batch_topk, per_row_topk, soft_topk, topk_mask
from softsae_lib.saes import (
    ARCHITECTURES,
    SAE,
    BatchTopKConfig,
    BatchTopKSAE,
    JumpReLUConfig,
    JumpReLUSAE,
    ReLUConfig,
    ReLUSAE,
    SAEConfig,
    SoftSAE,
    SoftSAEConfig,
    TopKConfig,
    TopKSAE,
    make_sae,
    register_sae,
)
from softsae_lib.training import TrainConfig, TrainingError, TrainResult, train_sae

__version__ = "0.1.0"

__all__ = [
    "soft_topk", "topk_mask", "per_row_topk", "batch_topk",
    "SAE", "SAEConfig", "ARCHITECTURES", "make_sae", "register_sae",
    "SoftSAE", "SoftSAEConfig", "TopKSAE", "TopKConfig", "BatchTopKSAE", "BatchTopKConfig",
    "JumpReLUSAE", "JumpReLUConfig", "ReLUSAE", "ReLUConfig",
    "TrainConfig", "train_sae", "TrainResult", "TrainingError",
    "save_sae", "load_sae", "SAEFileError", "evaluate_sae",
    "fvu", "explained_variance", "mse", "cosine_similarity", "norm_ratio",
    "relative_reconstruction_bias", "reconstruction_metrics", "l0_per_sample", "l0_summary",
    "feature_counts", "feature_density", "sparsity_metrics",
]
