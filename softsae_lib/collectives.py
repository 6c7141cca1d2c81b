"""Collectives that model code uses inside its loss (below both ``saes`` and ``training``).

``softsae_lib.training.distributed`` launches and drives data-parallel training and re-exports
:func:`global_mean`; models import it from here so that no model module depends on the
training layer.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor


def global_mean(t: Tensor) -> Tensor:
    """Mean of ``t`` over all elements on all ranks, differentiable (equal-sized shards).

    Its gradient, after DDP's averaging, is the gradient of the single-process mean. Without a
    process group of more than one process it is ``t.mean()``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t.mean()
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t.sum()) / (t.numel() * dist.get_world_size())
