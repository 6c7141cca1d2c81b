"""Sparse autoencoder architectures; every one registers by its ``arch`` name (see :mod:`.registry`)."""

from softsae_lib.saes.base import SAE, LossOutput, SAEConfig, StepContext, TrainSchedule, firing
from softsae_lib.saes.batch_topk import BatchTopKConfig, BatchTopKSAE
from softsae_lib.saes.choice import FeatureChoiceConfig, FeatureChoiceSAE, MutualChoiceConfig, MutualChoiceSAE
from softsae_lib.saes.jumprelu import JumpReLUConfig, JumpReLUSAE
from softsae_lib.saes.matryoshka import MatryoshkaConfig, MatryoshkaSAE
from softsae_lib.saes.registry import ARCHITECTURES, make_sae, register_sae
from softsae_lib.saes.relu import ReLUConfig, ReLUSAE
from softsae_lib.saes.soft import SoftSAE, SoftSAEConfig, SoftStepContext
from softsae_lib.saes.sparsemax_attention import SparsemaxAttentionConfig, SparsemaxAttentionSAE
from softsae_lib.saes.topk import TopKConfig, TopKSAE
from softsae_lib.saes.tree import TreeConfig, TreeSAE

# The baselines and SoftSAE, then the adaptive-sparsity architectures from the literature.
for _cls in (SoftSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE, ReLUSAE,
             MatryoshkaSAE, FeatureChoiceSAE, MutualChoiceSAE, SparsemaxAttentionSAE, TreeSAE):
    register_sae(_cls)


__all__ = [
    "ARCHITECTURES", "make_sae", "register_sae", "SAE", "SAEConfig", "StepContext", "LossOutput",
    "TrainSchedule", "firing", "SoftSAE", "SoftSAEConfig", "SoftStepContext", "TopKSAE", "TopKConfig",
    "BatchTopKSAE", "BatchTopKConfig",
    "JumpReLUSAE", "JumpReLUConfig", "ReLUSAE", "ReLUConfig",
    "MatryoshkaSAE", "MatryoshkaConfig", "FeatureChoiceSAE", "FeatureChoiceConfig", "MutualChoiceSAE",
    "MutualChoiceConfig", "SparsemaxAttentionSAE", "SparsemaxAttentionConfig", "TreeSAE", "TreeConfig",
]
