"""Sparse autoencoder architectures; every one registers here by its ``arch`` name."""

from softsae_lib.saes.base import SAE, LossOutput, SAEConfig, StepContext
from softsae_lib.saes.batch_topk import BatchTopKConfig, BatchTopKSAE
from softsae_lib.saes.choice import FeatureChoiceConfig, FeatureChoiceSAE, MutualChoiceConfig, MutualChoiceSAE
from softsae_lib.saes.jumprelu import JumpReLUConfig, JumpReLUSAE
from softsae_lib.saes.matryoshka import MatryoshkaConfig, MatryoshkaSAE
from softsae_lib.saes.relu import ReLUConfig, ReLUSAE
from softsae_lib.saes.soft import SoftSAE, SoftSAEConfig
from softsae_lib.saes.sparsemax_attention import SparsemaxAttentionConfig, SparsemaxAttentionSAE
from softsae_lib.saes.topk import TopKConfig, TopKSAE
from softsae_lib.saes.tree import TreeConfig, TreeSAE

ARCHITECTURES: dict[str, type[SAE]] = {
    cls.arch: cls for cls in (SoftSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE, ReLUSAE)
}
# Adaptive-sparsity architectures from the literature (issue 6).
ARCHITECTURES.update({cls.arch: cls for cls in (MatryoshkaSAE, FeatureChoiceSAE, MutualChoiceSAE,
                                                SparsemaxAttentionSAE, TreeSAE)})


def make_sae(arch: str, **config) -> SAE:
    """Build an SAE by registry name, e.g. ``make_sae("soft", d_model=768, dict_size=16384, k=64)``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown SAE architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**config)


__all__ = [
    "ARCHITECTURES", "make_sae", "SAE", "SAEConfig", "StepContext", "LossOutput",
    "SoftSAE", "SoftSAEConfig", "TopKSAE", "TopKConfig", "BatchTopKSAE", "BatchTopKConfig",
    "JumpReLUSAE", "JumpReLUConfig", "ReLUSAE", "ReLUConfig",
    "MatryoshkaSAE", "MatryoshkaConfig", "FeatureChoiceSAE", "FeatureChoiceConfig", "MutualChoiceSAE",
    "MutualChoiceConfig", "SparsemaxAttentionSAE", "SparsemaxAttentionConfig", "TreeSAE", "TreeConfig",
]
