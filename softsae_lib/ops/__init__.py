"""Differentiable and hard top-k operators."""

from softsae_lib.ops.geometric_median import geometric_median
from softsae_lib.ops.hard_topk import batch_topk, per_row_topk, topk_mask
from softsae_lib.ops.soft_topk import soft_topk, soft_topk_gate, window_size

__all__ = ["soft_topk", "soft_topk_gate", "window_size", "topk_mask", "per_row_topk", "batch_topk",
           "geometric_median"]
