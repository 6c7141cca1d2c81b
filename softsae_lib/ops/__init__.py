"""Tensor operators the SAEs are built from. Exported here: soft (LapSum) and hard top-k selection and
the geometric median (b_dec's initialisation); sparsemax (``ops.sparsemax``) and the k-estimator head
(``ops.relu_mlp_head``) are imported from their modules."""

from softsae_lib.ops.geometric_median import geometric_median
from softsae_lib.ops.hard_topk import batch_topk, per_row_topk, topk_mask
from softsae_lib.ops.soft_topk import soft_topk, soft_topk_gate, window_size

__all__ = ["soft_topk", "soft_topk_gate", "window_size", "topk_mask", "per_row_topk", "batch_topk",
           "geometric_median"]
