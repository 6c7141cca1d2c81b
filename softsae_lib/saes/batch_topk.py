"""BatchTopK SAE (Bussmann, Leask, Nanda 2024, arXiv 2412.06410).

Training keeps the top k·B activations of the whole batch; inference is batch-independent,
z = r·1[r > θ], with θ an exponential moving average of the smallest kept activation per
training batch (dictionary_learning: β = 0.999, initialised to the first value).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from softsae_lib.ops.hard_topk import batch_topk
from softsae_lib.saes.base import SAE, LossOutput, SAEConfig, StepContext, check_k


@dataclass
class BatchTopKConfig(SAEConfig):
    k: int = 32
    """Mean active latents per sample (exact per training batch)."""
    threshold_beta: float = 0.999
    """EMA decay of the inference threshold θ."""
    threshold_start_step: int | None = None
    """First step that updates θ; None means min(1000, total_steps // 2) (reference: 1000)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self.k, self.dict_size)


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
        z = batch_topk(r, min(ctx.k, self.dict_size))
        recon = self.decode_normalized(z)
        l2 = self.recon_loss(x_n, recon)
        return LossOutput.from_active(l2, recon, r, z > 0, {"l2": l2.item(), "threshold": float(self.threshold)})

    @torch.no_grad()
    def after_step(self, out: LossOutput, ctx: StepContext) -> None:
        start = self.config.threshold_start_step
        start = min(1000, ctx.total_steps // 2) if start is None else start
        if ctx.step < start:
            return
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
