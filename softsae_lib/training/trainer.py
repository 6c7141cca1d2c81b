"""One trainer for every architecture (``docs/method.md`` §1.4 for the step and its schedules).

Per step: normalise the batch with the model's stored normalisation; on a fresh model set b_dec to
the batch's geometric median; model loss (+ AuxK on dead latents); backward; remove the
decoder-parallel gradient; clip; Adam with warm-up/decay; renormalise the decoder; update the
dead-latent counters and the model's non-gradient state.

Under ``torchrun`` (a process group of W > 1 ranks) the same function trains data-parallel; see
:mod:`softsae_lib.training.distributed` for what is split, averaged and reduced.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from softsae_lib.saes.auxk import auxk_loss
from softsae_lib.saes.base import SAE, StepContext
from softsae_lib.training import distributed as dist_
from softsae_lib.training import schedules
from softsae_lib.training.checkpoint import (
    CHECKPOINT_FILE,
    check_checkpoint_dir,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
)
from softsae_lib.training.config import TrainConfig
from softsae_lib.training.data import BatchSource


class TrainingError(RuntimeError):
    """Training cannot go on (bad batch, non-finite or diverging loss); the message names the step."""


@dataclass
class TrainResult:
    model: SAE
    """The trained model (the same object that was passed in)."""
    history: pd.DataFrame
    """One row per logged step: losses, lr, k, α, L0, dead fraction, seconds."""
    steps_run: int
    """Steps executed by this call (fewer than cfg.steps after a resume)."""


def _check_batch(x: torch.Tensor, step: int) -> None:
    finite = torch.isfinite(x)
    if not finite.all():
        bad = (~finite).nonzero()[0].tolist()
        raise TrainingError(f"step {step}: input batch has {int((~finite).sum())} NaN/Inf value(s), "
                            f"first at row {bad[0]}, column {bad[1]}")


def _fit_normalization(model: SAE, source: BatchSource, cfg: TrainConfig) -> None:
    n = cfg.normalization_batches
    if source.batch_size is not None:
        n = min(n, source.batches_per_epoch)
    elif source.one_shot:
        n = min(n, cfg.steps)  # a one-shot iterator may hold no more batches than the run uses
    sample = []
    for i in range(max(1, n)):
        x = source.batch(i, keep=True, full=True)  # every rank fits the same statistics
        _check_batch(x, i)
        sample.append(x)
    model.fit_normalization(torch.cat(sample))


class _LossModule(torch.nn.Module):
    """``model.loss`` as a module's forward, which DistributedDataParallel wraps."""

    def __init__(self, model: SAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x_n: torch.Tensor, ctx: StepContext):
        return self.model.loss(x_n, ctx)


def train_sae(model: SAE, data, cfg: TrainConfig | None = None,
              on_step: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train ``model`` in place on ``data``.

    Args:
        model: any registered SAE.
        data: (N, d) tensor, numpy array or memmap, or an iterable of (B, d) batches.
        cfg: training configuration (defaults to ``TrainConfig()``).
        on_step: called as ``on_step(step, terms)`` after every optimiser step (logging hooks;
            an exception raised there stops training, the last checkpoint stays valid).

    Returns:
        A :class:`TrainResult` with the model and its history as a DataFrame.

    Raises:
        TrainingError: a batch has NaN/Inf, or the loss is non-finite or diverges (names the step).
    """
    cfg = cfg or TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if cfg.checkpoint_dir:
        check_checkpoint_dir(cfg.checkpoint_dir)  # fail now, not at the first checkpoint
    device = torch.device(cfg.device) if cfg.device else model.W_dec.device
    model.to(device)
    rank, world = dist_.info().rank, dist_.info().world_size
    source = BatchSource(data, cfg.batch_size, model.d_model, cfg.seed, rank=rank, world_size=world)
    lr = cfg.lr if cfg.lr is not None else schedules.default_lr(model.dict_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=cfg.adam_betas)
    # DDP averages gradients across ranks; buffers are reduced explicitly (synced_buffers), not
    # broadcast from rank 0; unused parameters happen (SoftSAE's frozen estimator in the hard phase).
    step_loss = (torch.nn.parallel.DistributedDataParallel(_LossModule(model), broadcast_buffers=False,
                                                          find_unused_parameters=True)
                 if world > 1 else model.loss)
    since_fired = torch.zeros(model.dict_size, dtype=torch.long, device=device)
    history: list[dict] = []
    start = 0

    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    saved = load_checkpoint(ckpt_dir) if (ckpt_dir and cfg.resume and rank == 0) else None
    saved = dist_.broadcast_object(saved)  # ranks on other machines need no shared file system
    data_id = source.fingerprint() if ckpt_dir else None
    if saved is not None:
        check_compatible(ckpt_dir / CHECKPOINT_FILE, saved, model.arch, model.config, cfg, data_id)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        since_fired = saved["since_fired"].to(device)
        history = saved["history"]
        start = saved["step"]
    elif not bool(model.norm_fitted):
        _fit_normalization(model, source, cfg)

    def checkpoint(next_step: int) -> None:
        if ckpt_dir is None or rank != 0:
            return
        save_checkpoint(ckpt_dir, {
            "step": next_step, "arch": model.arch, "model_config": dataclasses.asdict(model.config),
            "train_config": dataclasses.asdict(cfg), "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "since_fired": since_fired.cpu(), "history": history,
            "data": data_id,
        })

    since_bound = int(since_fired.max()) if since_fired.numel() else 0  # ≥ max(since_fired), host-side
    k_target = getattr(model.config, "k", None)
    alpha_final = getattr(model.config, "alpha", 1.0)
    k_aux = cfg.k_aux if cfg.k_aux is not None else model.d_model // 2
    use_autocast = cfg.autocast_bf16 and device.type == "cuda"
    # tqdm's disable=None means "only on a terminal".
    quiet = None if cfg.progress is None else not cfg.progress
    bar = tqdm(total=cfg.steps, initial=start, disable=quiet or rank != 0, desc=f"train {model.arch}",
               dynamic_ncols=True)
    t0 = time.perf_counter()
    model.train()
    for step in range(start, cfg.steps):
        x = source.batch(step).to(device, non_blocking=True)
        _check_batch(x, step)
        x_n = model.normalize(x)
        if not bool(model.b_dec_initialized):  # a fresh model; fine-tuning keeps its b_dec
            model.init_b_dec(model.normalize(source.batch(step, full=True).to(device)) if world > 1 else x_n)
        ctx = StepContext(
            step=step, total_steps=cfg.steps,
            k=schedules.annealed_k(step, model.d_model, k_target, cfg.k_anneal_steps) if k_target else 0,
            alpha=schedules.annealed_alpha(step, alpha_final, cfg.alpha_anneal_steps),
            hard=schedules.in_hard_phase(step, cfg.steps, cfg.hard_topk_steps),
            sparsity_scale=schedules.warmup_scale(step, cfg.sparsity_warmup_steps),
        )
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
            out = step_loss(x_n, ctx)
            loss = out.loss
            terms = dict(out.terms)
            # No latent can be dead before max(since_fired) reaches the threshold: a host-side
            # upper bound of that maximum skips the (F,) comparison and its sync until then.
            if model.uses_auxk and cfg.auxk_alpha > 0 and since_bound >= cfg.dead_threshold:
                since_bound = int(since_fired.max())
                dead = since_fired >= cfg.dead_threshold
            else:
                dead = None
            if dead is not None and bool(dead.any()):
                aux = auxk_loss(out.pre_acts, x_n - out.recon, dead, model.W_dec, k_aux)
                loss = loss + cfg.auxk_alpha * aux
                terms["auxk"] = aux.item()
        # one reduction per step, so every rank logs and stops on the same global values
        stats = dist_.reduce_(torch.tensor([loss.item(), terms.get("l2", math.nan),
                                            (x_n - x_n.mean(dim=0)).pow(2).sum(dim=-1).mean().item(),
                                            out.firing_count().item() / x.shape[0]],
                                           dtype=torch.float64, device=device))
        loss_value, variance = stats[0].item(), stats[2].item()
        if "l2" in terms:
            terms["l2"] = stats[1].item()
        if not math.isfinite(loss_value):
            raise TrainingError(f"step {step}: loss is {loss_value} ({terms}); lower lr or check the data")
        if terms.get("l2", 0.0) > cfg.divergence_factor * max(variance, 1e-12):
            raise TrainingError(f"step {step}: reconstruction loss {terms['l2']:.4g} exceeds "
                                f"{cfg.divergence_factor}× the batch variance {variance:.4g}: "
                                f"training diverged")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.remove_parallel_decoder_grad()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        lr_now = lr * schedules.lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.decay_start)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        optimizer.step()
        model.normalize_decoder()
        with torch.no_grad():
            fired = out.fired_latents()
            if world > 1:
                fired = dist_.reduce_(fired.to(torch.uint8), "max").bool()
            since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + x.shape[0] * world)
            since_bound += x.shape[0] * world
            model.after_step(out, ctx)
            for name in model.synced_buffers:
                dist_.reduce_(getattr(model, name))
        terms.update(loss=loss_value, l0=stats[3].item())
        if on_step is not None:
            on_step(step, terms)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            history.append({
                "step": step, **terms, "lr": lr_now, "k": ctx.k, "alpha": ctx.alpha, "hard": ctx.hard,
                "fvu_batch": terms.get("l2", float("nan")) / max(variance, 1e-12),
                "dead_fraction": (since_fired >= cfg.dead_threshold).float().mean().item(),
                "seconds": time.perf_counter() - t0,
            })
            bar.set_postfix(loss=f"{loss_value:.4g}", l0=f"{terms['l0']:.1f}", refresh=False)
        bar.update(1)
        if (step + 1) % cfg.checkpoint_every == 0 or step == cfg.steps - 1:
            checkpoint(step + 1)
    bar.close()
    model.eval()
    return TrainResult(model=model, history=pd.DataFrame(history), steps_run=cfg.steps - start)
