"""AuxK dead-latent auxiliary loss (Gao et al. 2024, arXiv 2406.04093; docs/sae-variants.md §0)."""

from __future__ import annotations

import torch


def auxk_loss(pre_acts: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor,
              W_dec: torch.Tensor, k_aux: int) -> torch.Tensor:
    """Normalised AuxK loss: how well the top dead latents reconstruct the residual.

    Args:
        pre_acts: (B, F) non-negative pre-selection activations.
        residual: (B, d) e = x_n − x̂_n; it is detached here (stop-gradient).
        dead: (F,) bool mask of dead latents.
        W_dec: (F, d) decoder; the auxiliary reconstruction has no bias.
        k_aux: number of dead latents used per sample (capped at the number of dead latents).

    Returns:
        Scalar mean‖e − ê‖² / mean‖e − mean_b e‖², with 0 when nothing is dead or the residual
        has no variance (the reference's ``nan_to_num(0)``).
    """
    n_dead = int(dead.sum())
    k = min(k_aux, n_dead)
    if k == 0:
        return pre_acts.new_zeros(())
    e = residual.detach()
    # Only the dead columns take part: select and decode among them, (B, n_dead) instead of (B, F)
    # (usually a small fraction of the dictionary; the same values as masking the live ones to 0,
    # whose pre-activations are ≥ 0 and lose any tie to a dead one without changing ê).
    cols = dead.nonzero().squeeze(1)
    acts = pre_acts.index_select(1, cols)
    vals, idx = acts.topk(k, dim=-1, sorted=False)
    e_hat = torch.zeros_like(acts).scatter(-1, idx, vals) @ W_dec.index_select(0, cols)
    num = (e - e_hat).pow(2).sum(dim=-1).mean()
    den = (e - e.mean(dim=0)).pow(2).sum(dim=-1).mean()
    return torch.nan_to_num(num / den, nan=0.0, posinf=0.0, neginf=0.0)
