"""Sparse autoencoder architectures; every one registers here by its ``arch`` name."""

from softsae_lib.saes.base import SAE, LossOutput, SAEConfig, StepContext
from softsae_lib.saes.batch_topk import BatchTopKConfig, BatchTopKSAE
from softsae_lib.saes.jumprelu import JumpReLUConfig, JumpReLUSAE
from softsae_lib.saes.relu import ReLUConfig, ReLUSAE
from softsae_lib.saes.soft import SoftSAE, SoftSAEConfig
from softsae_lib.saes.topk import TopKConfig, TopKSAE

ARCHITECTURES: dict[str, type[SAE]] = {
    cls.arch: cls for cls in (SoftSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE, ReLUSAE)
}


def make_sae(arch: str, **config) -> SAE:
    """Build an SAE by registry name, e.g. ``make_sae("soft", d_model=768, dict_size=16384, k=64)``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown SAE architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**config)


__all__ = [
    "ARCHITECTURES", "make_sae", "SAE", "SAEConfig", "StepContext", "LossOutput",
    "SoftSAE", "SoftSAEConfig", "TopKSAE", "TopKConfig", "BatchTopKSAE", "BatchTopKConfig",
    "JumpReLUSAE", "JumpReLUConfig", "ReLUSAE", "ReLUConfig",
]
