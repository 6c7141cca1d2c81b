"""Run a trained SAE over held-out data and compute every metric in raw activation space."""

from __future__ import annotations

import torch

from softsae_lib.batches import sequential_batches
from softsae_lib.metrics import (
    feature_counts,
    l0_summary,
    merge_stats,
    reconstruction_metrics_from_stats,
    reconstruction_stats,
    sparsity_metrics_from_counts,
)
from softsae_lib.saes.base import SAE


@torch.no_grad()
def evaluate_sae(model: SAE, data, batch_size: int = 4096, return_per_sample: bool = False) -> dict:
    """Reconstruction and sparsity metrics of ``model`` (inference path) on ``data``.

    Args:
        model: a trained SAE (its stored normalisation is undone, so metrics are in raw space).
        data: (N, d) tensor/array, or an iterable of (B, d) batches, all rows used in order.
        return_per_sample: also return the model's per-sample statistics (:meth:`SAE.per_sample_stats`:
            L0, and k̂ for SoftSAE) as tensors of shape (N,).

    Returns:
        Dict with the keys of :func:`reconstruction_metrics_from_stats`, ``l0`` (summary dict),
        the sparsity metrics (dead/dense fractions), the model's own summaries of its per-sample
        fields (:meth:`SAE.per_sample_summary`), ``n_samples``, and when asked ``per_sample``.
    """
    was_training = model.training
    model.eval()
    device = model.W_dec.device
    stats, counts, per_sample = None, None, {}
    for x in sequential_batches(data, batch_size):
        x = x.to(device, torch.float32)
        z = model.encode(x)
        x_hat = model.decode(z)
        stats = merge_stats(stats, reconstruction_stats(x, x_hat))
        c = feature_counts(z)
        counts = c if counts is None else counts + c
        for key, value in model.per_sample_stats(x, z).items():
            per_sample.setdefault(key, []).append(value.cpu())
    if stats is None:
        raise ValueError("evaluate_sae: data is empty")
    model.train(was_training)
    per_sample = {key: torch.cat(parts) for key, parts in per_sample.items()}
    out = {**reconstruction_metrics_from_stats(stats), "l0": l0_summary(per_sample["l0"]),
           **sparsity_metrics_from_counts(counts, int(stats["n"])), **model.per_sample_summary(per_sample)}
    if return_per_sample:
        out["per_sample"] = per_sample
    return out
