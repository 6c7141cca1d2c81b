"""Model-side schedules of the step index (docs/method.md §1.4): pure functions, so a resumed run
needs only the step. The trainer's own schedules (learning rate) are in ``training/schedules.py``."""

from __future__ import annotations

import math


def fraction_steps(fraction: float, steps: int) -> int:
    """int(fraction · steps): a fraction of a run in whole steps (rounded down)."""
    return int(fraction * steps)


def steps_fraction(n: int, steps: int) -> float:
    """The smallest float f ≥ n/steps with ``fraction_steps(f, steps) == n`` (n/steps alone may fall
    one step short in floating point, e.g. int((15/22)·22) = 14)."""
    f = n / steps
    while fraction_steps(f, steps) < n:
        f = math.nextafter(f, math.inf)
    return f


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
