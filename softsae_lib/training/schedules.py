"""Pure schedule functions of the step index (docs/method.md §1.4), so a resumed run needs only the step.

The learning-rate schedule is the trainer's; the sparsity schedules (k, α, hard phase, penalty
warm-up) belong to the models and live in :mod:`softsae_lib.saes.schedules` (re-exported here).
"""

from __future__ import annotations

import math

from softsae_lib.saes.schedules import annealed_alpha, annealed_k, in_hard_phase, warmup_scale

__all__ = ["lr_factor", "default_lr", "annealed_k", "annealed_alpha", "in_hard_phase", "warmup_scale"]


def lr_factor(step: int, steps: int, warmup_steps: int, decay_start: int | None) -> float:
    """Multiplier of the base learning rate: linear warm-up 0→1, constant, then linear decay to 0."""
    factor = 1.0
    if warmup_steps > 0 and step < warmup_steps:
        factor = step / warmup_steps
    if decay_start is not None and step >= decay_start and steps > decay_start:
        factor = min(factor, (steps - step) / (steps - decay_start))
    return factor


def default_lr(dict_size: int) -> float:
    """2e-4/sqrt(F/2^14): dictionary_learning's width-scaled default."""
    return 2e-4 / math.sqrt(dict_size / 2**14)
