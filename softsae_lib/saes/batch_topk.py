"""BatchTopK SAE (Bussmann, Leask, Nanda 2024, arXiv 2412.06410).

Training keeps the top k·B activations of the whole batch; inference is batch-independent,
z = r·1[r > θ], with θ an exponential moving average of the smallest kept activation per
training batch (dictionary_learning: β = 0.999, initialised to the first value).

That EMA tracks the *training* quantile, and on rows the model has seen for many epochs it
overshoots held-out L0 (k = 4: 4.26 on held-out rows vs 3.92–3.99 on training rows). For held-out
use, :meth:`BatchTopKSAE.calibrate_l0` sets θ from a calibration split so that the mean L0 there
equals k (or any target); the EMA stays the default so existing results are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from softsae_lib.ops.hard_topk import batch_topk, batch_topk_with_firing
from softsae_lib.saes.base import SAE, LossOutput, SAEConfig, StepContext, check_k


@dataclass
class BatchTopKConfig(SAEConfig):
    k: int = 32
    """Mean active latents per sample (exact per training batch)."""
    threshold_beta: float = 0.999
    """EMA decay of the inference threshold θ."""
    threshold_start_step: int | None = None
    """First step that updates θ; None means min(1000, total_steps // 2) (reference: 1000)."""
    encoder_init_scale: float = 0.1
    """W_enc starts at 0.1 · W_decᵀ. With the exactly tied init (1.0) the random initial projections
    decide the first batch-level selections and the dictionary never recovers from them: on
    SAELens's synthetic data (benchmarks/peer_saelens.py) held-out FVU at L0 = k is 0.314 with 1.0
    against 0.270 with 0.1 or 0.01 (MCC 0.71 → 0.74-0.75). SAELens's effective encoder starts at
    0.01 · W_decᵀ (decoder_init_norm 0.1, activations rescaled by the decoder norm)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self.k, self.dict_size)

    @classmethod
    def migrate(cls, fields: dict[str, Any], train_config: dict[str, Any] | None = None) -> dict[str, Any]:
        """Configs saved before ``encoder_init_scale`` existed were initialised exactly tied (1.0)."""
        fields = super().migrate(fields, train_config)
        fields.setdefault("encoder_init_scale", 1.0)
        return fields


def l0_quantile_threshold(acts: Iterable[torch.Tensor], target_l0: float) -> float:
    """θ such that ``#{a > θ} = round(target_l0 · N)`` over non-negative activations of N rows.

    Args:
        acts: batches of (B, F) non-negative activations (post-ReLU pre-activations), N rows in all.
        target_l0: the mean number of active latents per row wanted (> 0).

    Returns:
        The (m+1)-th largest activation, m = round(target_l0 · N): with the strict rule ``a > θ``
        exactly m entries survive (barring ties), i.e. mean L0 = target_l0 on these rows. 0.0 when
        fewer than m + 1 entries are positive (then every positive entry is kept).
    """
    if not target_l0 > 0:
        raise ValueError(f"target_l0 must be positive, got {target_l0}")
    acts = list(acts)
    n_rows = sum(a.shape[0] for a in acts)
    if n_rows == 0:
        raise ValueError("l0_quantile_threshold: no calibration rows")
    m = int(round(target_l0 * n_rows))
    # The global top m+1 lie within the union of every batch's top m+1: memory O(batches · m), not N · F.
    tops = [a.detach().flatten().topk(min(m + 1, a.numel())).values for a in acts]
    top = torch.cat(tops)
    if top.numel() <= m:
        return 0.0
    return max(0.0, float(top.topk(m + 1).values[-1]))


class BatchTopKSAE(SAE):
    arch = "batch_topk"
    synced_buffers = ("threshold",)
    config_cls = BatchTopKConfig

    def _init_extra(self, gen: torch.Generator) -> None:
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0 means "not estimated yet"

    def encode_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        if self.threshold < 0:
            raise RuntimeError("BatchTopKSAE has no inference threshold yet: train it past "
                               "threshold_start_step or call calibrate_threshold(batches)")
        r = self.pre_activations(x_n).relu_()
        return r * (r > self.threshold)

    def loss(self, x_n: torch.Tensor, ctx: StepContext) -> LossOutput:
        r = self.pre_activations(x_n).relu_()
        z, fired, n_fired, kept_min = batch_topk_with_firing(r, min(ctx.k, self.dict_size))
        recon = self.decode_normalized(z)
        l2 = self.recon_loss(x_n, recon)
        return LossOutput(l2, recon, r, fired, n_fired, {"l2": l2.item(), "threshold": float(self.threshold)},
                          active=z > 0, extras={"kept_min": kept_min})

    @torch.no_grad()
    def after_step(self, out: LossOutput, ctx: StepContext) -> None:
        start = self.config.threshold_start_step
        start = min(1000, ctx.total_steps // 2) if start is None else start
        if ctx.step < start:
            return
        if "kept_min" in out.extras:  # read off the selection by loss()
            m = out.extras["kept_min"]
            if torch.isinf(m):
                return
        else:  # subclasses that report their (B, F) selection
            kept = out.pre_acts[out.active]
            if kept.numel() == 0:
                return
            m = kept.min()
        beta = self.config.threshold_beta
        self.threshold.copy_(m if self.threshold < 0 else beta * self.threshold + (1 - beta) * m)

    @torch.no_grad()
    def calibrate_threshold(self, batches, k: float | None = None) -> float:
        """Set θ to the mean over raw batches (B, d) of the smallest kept BatchTopK activation.

        The paper's estimator E_X[min kept activation]; use it after training when the EMA had
        too few steps. Returns the new θ.
        """
        k = self.config.k if k is None else k
        mins = []
        for x in batches:
            r = torch.relu(self.pre_activations(self.normalize(x)))
            kept = r[batch_topk(r, k) > 0]
            if kept.numel():
                mins.append(kept.min())
        if not mins:
            raise ValueError("calibrate_threshold: no batch had a positive activation")
        self.threshold.copy_(torch.stack(mins).mean())
        return float(self.threshold)

    @torch.no_grad()
    def calibrate_l0(self, x: torch.Tensor | Iterable[torch.Tensor], target_l0: float | None = None,
                     batch_size: int = 4096) -> float:
        """Set θ so that the mean inference L0 on the calibration rows ``x`` equals ``target_l0``.

        θ is the quantile of the post-ReLU pre-activations r: the (m+1)-th largest value over all
        calibration rows, m = round(target_l0 · N) (:func:`l0_quantile_threshold`). Use rows the
        model was *not* trained on (a held-out calibration split): training rows give a θ that is
        too low for new data. On a further held-out split the mean L0 then lands within sampling
        error of the target (tests/saes/test_batch_topk_calibration.py;
        results/bench/peer_saelens.json).

        Args:
            x: raw (N, d) calibration rows, or an iterable of raw (B, d) batches.
            target_l0: mean active latents per row wanted; None means the model's k.
            batch_size: rows per forward pass when ``x`` is a tensor.

        Returns:
            The new θ.
        """
        if self.threshold.ndim != 0:  # Feature Choice: one θ_j per latent, not one quantile
            raise TypeError(f"{type(self).__name__} has per-latent thresholds; calibrate_l0 sets one θ")
        target = float(self.config.k if target_l0 is None else target_l0)
        if not (math.isfinite(target) and 0 < target <= self.dict_size):
            raise ValueError(f"target_l0 must be in (0, {self.dict_size}], got {target_l0}")
        batches = ([x[i:i + batch_size] for i in range(0, x.shape[0], batch_size)]
                   if isinstance(x, torch.Tensor) else x)
        device = self.W_dec.device
        acts = (self.pre_activations(self.normalize(b.to(device, torch.float32))).relu_() for b in batches)
        self.threshold.fill_(l0_quantile_threshold(acts, target))
        return float(self.threshold)
