"""Hard top-k selections used at inference and in hard training phases.

* ``topk_mask(x, k)``: per-row top-⌊k_b⌋ mask, the inference path of SoftSAE (docs/method.md §1.2).
* ``per_row_topk(x, k)``: the same selection applied to x (gradients reach the kept entries);
  ``per_row_topk_with_firing`` also returns which columns fired, read off the B·k selected entries.
* ``batch_topk(x, k)``: the top-(k·B) entries over the flattened batch (BatchTopK, arXiv 2412.06410);
  ``batch_topk_with_firing`` also returns the firing and the smallest positive kept entry.
"""

from __future__ import annotations

import torch

from softsae_lib.ops.row_topk import row_topk

__all__ = ["topk_mask", "per_row_topk", "per_row_topk_with_firing", "batch_topk", "batch_topk_with_firing"]


def _check_no_nan(x: torch.Tensor, name: str) -> None:
    """torch.topk ranks NaN above every number: refuse it rather than select it."""
    if x.is_floating_point() and x.numel() and bool(torch.isnan(x.sum())):  # one cheap reduction
        bad = torch.isnan(x).reshape(x.shape[0], -1).any(dim=1).nonzero()
        if bad.numel():
            raise ValueError(f"{name}: x has NaN in row {int(bad[0])} ({bad.shape[0]} row(s) affected)")


def _row_counts(x: torch.Tensor, k: torch.Tensor | float | int) -> torch.Tensor:
    """⌊k⌋ per row as a long tensor of shape (B,); validates range against n = x.shape[-1]."""
    if x.dim() != 2:
        raise ValueError(f"expected x of shape (batch, n), got {tuple(x.shape)}")
    B, n = x.shape
    k_t = torch.as_tensor(k, device=x.device)
    if k_t.dim() == 2 and k_t.shape[-1] == 1:
        k_t = k_t.squeeze(-1)
    if k_t.dim() == 0:
        k_t = k_t.expand(B)
    if k_t.shape != (B,):
        raise ValueError(f"k of shape {tuple(k_t.shape)} must be a scalar, (batch,) or (batch, 1) "
                         f"for x of shape {tuple(x.shape)}")
    counts = torch.floor(k_t.detach()).long() if k_t.is_floating_point() else k_t.long()
    bad = (counts < 0) | (counts > n)
    if bad.any():
        row = int(bad.nonzero()[0])
        raise ValueError(f"k[row {row}] = {k_t[row].item()} is outside [0, n={n}]")
    return counts


def _per_row_indices(x: torch.Tensor, k) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    counts = _row_counts(x, k)
    _check_no_nan(x, "top-k")
    kmax = int(counts.max()) if counts.numel() else 0
    idx = row_topk(x, kmax)[1]
    vals = x.gather(1, idx)  # differentiable
    keep = torch.arange(kmax, device=x.device).unsqueeze(0) < counts.unsqueeze(1)
    return vals, idx, keep


def topk_mask(x: torch.Tensor, k: torch.Tensor | float | int) -> torch.Tensor:
    """Boolean mask of the ⌊k_b⌋ largest entries of each row.

    x: (batch, n); k: scalar, (batch,) or (batch, 1), floored like the official ``.long()``.
    Returns a (batch, n) bool tensor with exactly ⌊k_b⌋ True entries in row b (ties broken by
    :func:`~softsae_lib.ops.row_topk.row_topk`).
    """
    _, idx, keep = _per_row_indices(x, k)
    return torch.zeros_like(x, dtype=torch.bool).scatter_(1, idx, keep)


def per_row_topk(x: torch.Tensor, k: torch.Tensor | float | int) -> torch.Tensor:
    """x with all but the top-⌊k_b⌋ entries of each row set to zero; x: (batch, n)."""
    vals, idx, keep = _per_row_indices(x, k)
    return torch.zeros_like(x).scatter(1, idx, vals * keep)


def per_row_topk_with_firing(x: torch.Tensor, k: torch.Tensor | float | int
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`per_row_topk` and its firing: (z (B, n), fired (n,) bool, n_fired 0-d long).

    fired[j] says whether column j holds a positive entry of z in some row, n_fired counts the
    positive entries of z: the same as ``(z > 0).any(0)`` and ``count_nonzero(z > 0)``, read off
    the (B, ⌈k⌉) selection instead of three passes over (B, n) (a column-wise ``any`` over a
    512 × 1024 batch costs more than the top-k itself).
    """
    vals, idx, keep = _per_row_indices(x, k)
    kept = vals * keep
    positive = kept > 0
    fired = torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device).index_fill_(0, idx[positive], True)
    return torch.zeros_like(x).scatter(1, idx, kept), fired, torch.count_nonzero(positive)


def batch_topk(x: torch.Tensor, k: float | int) -> torch.Tensor:
    """Keep the ⌊k·batch⌋ largest entries of the whole (batch, n) tensor, zero the rest."""
    return _batch_topk_selection(x, k)[0]


def batch_topk_with_firing(x: torch.Tensor, k: float | int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`batch_topk` with (fired (n,) bool, n_fired 0-d long, kept_min 0-d): the columns with a
    positive kept entry, the number of positive kept entries, and the smallest positive kept entry
    (+∞ when there is none), all read off the ⌊k·B⌋ selected entries instead of passes over the
    (B, n) batch; the same values as ``(z > 0).any(0)``, ``count_nonzero(z > 0)`` and
    ``x[z > 0].min()``.
    """
    z, vals, idx = _batch_topk_selection(x, k)
    positive = vals > 0
    fired = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
    fired.index_fill_(0, idx[positive] % x.shape[1], True)
    inf = x.new_tensor(torch.inf)
    kept_min = torch.where(positive, vals, inf).min() if vals.numel() else inf
    return z, fired, torch.count_nonzero(positive), kept_min


def _batch_topk_selection(x: torch.Tensor, k: float | int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z (B, n), vals, flat idx): the kept entries of :func:`batch_topk` and where they are."""
    if x.dim() != 2:
        raise ValueError(f"expected x of shape (batch, n), got {tuple(x.shape)}")
    if not 0 <= float(k) <= x.shape[1]:  # also rejects NaN; int() would truncate −0.5·B to 0
        raise ValueError(f"batch_topk: k = {float(k)} (mean budget per row) is outside "
                         f"[0, n={x.shape[1]}]")
    _check_no_nan(x, "batch_topk")
    total = min(int(k * x.shape[0]), x.numel())
    flat = x.reshape(-1)
    vals, idx = torch.topk(flat, total, sorted=False)
    return torch.zeros_like(flat).scatter(0, idx, vals).reshape(x.shape), vals, idx
