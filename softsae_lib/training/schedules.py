"""Pure schedule functions of the step index (docs/method.md §1.4), so a resumed run needs only the step."""

from __future__ import annotations

import math


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


def annealed_k(step: int, d_model: int, k: int, anneal_steps: int | None) -> int:
    """int(d·(1−ρ) + k·ρ), ρ = min(step, K_a)/K_a: from d down to k (k when not annealing)."""
    if not anneal_steps:
        return k
    rho = min(step, anneal_steps) / anneal_steps
    return int(d_model * (1 - rho) + k * rho)


def annealed_alpha(step: int, alpha_final: float, anneal_steps: int | None) -> float:
    """(1−ρ)·1 + α_final·ρ: LapSum's scale from 1 down to α_final (α_final when not annealing)."""
    if not anneal_steps:
        return alpha_final
    rho = min(step, anneal_steps) / anneal_steps
    return (1 - rho) + alpha_final * rho


def in_hard_phase(step: int, steps: int, hard_topk_steps: int | None) -> bool:
    """True for the last ``hard_topk_steps`` steps (0-based step index)."""
    return bool(hard_topk_steps) and step >= steps - hard_topk_steps


def warmup_scale(step: int, warmup_steps: int) -> float:
    """Linear 0→1 warm-up of penalty coefficients."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)
