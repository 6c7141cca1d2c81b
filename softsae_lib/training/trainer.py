"""One trainer for every architecture (``docs/method.md`` §1.4 for the step and its schedules).

Per step: the model's schedule values (:meth:`SAE.step_context`); normalise the batch with the
model's stored normalisation; on a fresh model set b_dec to the batch's geometric median; model loss
plus the model's auxiliary loss given the dead-latent mask (:meth:`SAE.auxiliary_loss`, AuxK by
default); backward; remove the decoder-parallel gradient; clip; Adam with warm-up/decay; renormalise
the decoder; update the dead-latent counters and the model's non-gradient state. The trainer knows
no architecture by name: everything architecture-specific goes through the model's hooks.

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

from softsae_lib.batches import BatchSource
from softsae_lib.saes.base import SAE, LossOutput, StepContext
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


class TrainingError(RuntimeError):
    """Training cannot go on (bad batch, non-finite or diverging loss); the message names the step."""


@dataclass
class TrainResult:
    model: SAE
    """The trained model (the same object that was passed in)."""
    history: pd.DataFrame
    """One row per logged step: losses, lr, k, α, hard, phase, L0, FVU, dead fraction, alive latents,
    seconds."""
    steps_run: int
    """Steps executed by this call (fewer than cfg.steps after a resume)."""


def _nonfinite(x: torch.Tensor) -> str | None:
    """None when every entry of the (N, d) tensor x is finite, else how many are not and where the
    first one is (row, column)."""
    finite = torch.isfinite(x)
    if finite.all():
        return None
    row, col = (~finite).nonzero()[0].tolist()
    return f"{int((~finite).sum())} NaN/Inf value(s), first at row {row}, column {col}"


def _check_batch(x: torch.Tensor, step: int) -> None:
    if torch.isfinite(x.sum()):  # one reduction (~15x cheaper); finite values can still overflow it
        return
    bad = _nonfinite(x)
    if bad:
        raise TrainingError(f"step {step}: input batch has {bad}")


def _variance(x_n: torch.Tensor) -> float:
    """Total variance of the (B, d) batch: mean over rows of ‖x − mean‖² (the FVU's denominator)."""
    return (x_n - x_n.mean(dim=0)).pow(2).sum(dim=-1).mean().item()


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


def _dead_mask(model: SAE, cfg: TrainConfig, since_fired: torch.Tensor,
               since_bound: int) -> tuple[torch.Tensor | None, int]:
    """The (F,) dead mask the model's auxiliary loss reads (None when it needs none or no latent can
    be dead yet) and the updated host-side bound of max(since_fired).

    No latent can be dead before max(since_fired) reaches the threshold: a host-side upper bound of
    that maximum skips the (F,) comparison and its sync until then."""
    if not (model.needs_dead_mask(cfg) and since_bound >= cfg.dead_threshold):
        return None, since_bound
    return since_fired >= cfg.dead_threshold, int(since_fired.max())


def _step_stats(loss: torch.Tensor, terms: dict, x_n: torch.Tensor, out: LossOutput,
                device: torch.device) -> tuple[float, float, float]:
    """(loss, batch variance, L0) reduced over ranks (one reduction per step, so every rank logs and
    stops on the same global values); ``terms['l2']`` is replaced by its global value."""
    stats = dist_.reduce_(torch.tensor([loss.item(), terms.get("l2", math.nan),
                                        _variance(x_n),
                                        out.n_fired.item() / x_n.shape[0]],
                                       dtype=torch.float64, device=device))
    if "l2" in terms:
        terms["l2"] = stats[1].item()
    return stats[0].item(), stats[2].item(), stats[3].item()


def _check_divergence(step: int, loss_value: float, terms: dict, variance: float, cfg: TrainConfig) -> None:
    if not math.isfinite(loss_value):
        raise TrainingError(f"step {step}: loss is {loss_value} ({terms}); lower lr or check the data")
    if terms.get("l2", 0.0) > cfg.divergence_factor * max(variance, 1e-12):
        raise TrainingError(f"step {step}: reconstruction loss {terms['l2']:.4g} exceeds "
                            f"{cfg.divergence_factor}× the batch variance {variance:.4g}: "
                            f"training diverged")


def _history_row(step: int, terms: dict, lr_now: float, ctx: StepContext, fvu: float, fvu_mean: float,
                 dead: torch.Tensor, seconds: float) -> dict:
    """One history row: step, loss terms, lr, the schedule's values (k, α, hard, phase), the batch
    FVU of this step and its mean over the steps since the previous row (``fvu_mean``: a single
    batch is too noisy for the health check's plateau test), the dead fraction and the number
    of alive latents, seconds; dead: (F,) bool."""
    return {"step": step, **terms, "lr": lr_now, **ctx.history_values(),
            "fvu_batch": fvu, "fvu_mean": fvu_mean,
            "dead_fraction": dead.float().mean().item(), "alive_latents": dead.numel() - int(dead.sum()),
            "seconds": seconds}


def _check_heldout(heldout, d_model: int) -> torch.Tensor:
    """``heldout`` as a finite (M, d_model) float32 tensor, or a ValueError naming what is wrong."""
    x = torch.as_tensor(heldout, dtype=torch.float32)
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] != d_model:
        raise ValueError(f"train_sae: heldout must have shape (M ≥ 1, {d_model}), got {tuple(x.shape)}")
    bad = _nonfinite(x)
    if bad:
        raise ValueError(f"train_sae: heldout has {bad}")
    return x


@torch.no_grad()
def _heldout_fvu(model: SAE, heldout: torch.Tensor, ctx: StepContext) -> float:
    """The FVU of ``fvu_batch`` (the training objective's reconstruction term over the batch
    variance, in normalised space, at this step's schedule) on the (M, d) held-out rows.

    The training objective and not the inference path: the plateau check asks whether the
    optimiser still improves what it optimises, and SoftSAE's hard top-⌊k̂⌋ inference is not what
    its soft phase optimises (a trial on notebook 02's manifolds, SoftSAE seed 1: its held-out FVU
    changed by 22% across the window on the inference path, by 1.1% on the training objective).
    A model's ``loss`` changes no state (that is :meth:`SAE.after_step`'s job)."""
    x_n = model.normalize(heldout)
    return model.loss(x_n, ctx).terms.get("l2", math.nan) / max(_variance(x_n), 1e-12)


@dataclass
class _State:
    """What a checkpoint restores: the step to start from, dead counters, history, and the batch-FVU
    sum and count of the steps since the last history row (so a resumed run logs the same means)."""

    start: int
    since_fired: torch.Tensor
    history: list[dict]
    fvu_sum: float = 0.0
    fvu_count: int = 0


def _resume_or_init(model: SAE, optimizer: torch.optim.Optimizer, source: BatchSource, cfg: TrainConfig,
                    ckpt_dir: Path | None, data_id: dict | None, device: torch.device, rank: int) -> _State:
    """Restore the checkpoint of ``ckpt_dir`` when resuming; otherwise fit a fresh model's normalisation."""
    saved = load_checkpoint(ckpt_dir) if (ckpt_dir and cfg.resume and rank == 0) else None
    saved = dist_.broadcast_object(saved)  # ranks on other machines need no shared file system
    if saved is not None:
        check_compatible(ckpt_dir / CHECKPOINT_FILE, saved, model.arch, model.config, cfg, data_id)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        fvu_sum, fvu_count = saved.get("fvu_interval", (0.0, 0))  # absent in older checkpoints
        return _State(saved["step"], saved["since_fired"].to(device), saved["history"], float(fvu_sum),
                      int(fvu_count))
    if not bool(model.norm_fitted):
        _fit_normalization(model, source, cfg)
    return _State(0, torch.zeros(model.dict_size, dtype=torch.long, device=device), [])


def _save(ckpt_dir: Path, next_step: int, model: SAE, cfg: TrainConfig, optimizer: torch.optim.Optimizer,
          state: _State, data_id: dict | None) -> None:
    save_checkpoint(ckpt_dir, {
        "step": next_step, "arch": model.arch, "model_config": dataclasses.asdict(model.config),
        "train_config": dataclasses.asdict(cfg), "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "since_fired": state.since_fired.cpu(),
        "history": state.history, "data": data_id, "fvu_interval": [state.fvu_sum, state.fvu_count],
    })


def _optimizer_step(model: SAE, optimizer: torch.optim.Optimizer, loss: torch.Tensor, cfg: TrainConfig,
                    lr: float, step: int) -> float:
    """Backward, decoder-gradient projection, clipping, the scheduled lr, Adam, decoder renorm;
    returns the lr used at ``step``."""
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
    return lr_now


@torch.no_grad()
def _after_step(model: SAE, out: LossOutput, ctx: StepContext, state: _State, since_bound: int,
                global_rows: int, world: int) -> int:
    """Dead-latent counters (samples since each latent fired, over all ranks), the model's own
    post-step update and its synced buffers; returns the updated bound on ``state.since_fired``."""
    fired = out.fired
    if world > 1:
        fired = dist_.reduce_(fired.to(torch.uint8), "max").bool()
    state.since_fired = torch.where(fired, torch.zeros_like(state.since_fired),
                                    state.since_fired + global_rows)
    model.after_step(out, ctx)
    for name in model.synced_buffers:
        dist_.reduce_(getattr(model, name))
    return since_bound + global_rows


def train_sae(model: SAE, data, cfg: TrainConfig | None = None,
              on_step: Callable[[int, dict], None] | None = None, heldout=None,
              heldout_from: int = 0) -> TrainResult:
    """Train ``model`` in place on ``data``.

    Args:
        model: any registered SAE.
        data: (N, d) tensor, numpy array or memmap, or an iterable of (B, d) batches.
        cfg: training configuration (defaults to ``TrainConfig()``).
        on_step: called as ``on_step(step, terms)`` after every optimiser step (logging hooks;
            an exception raised there stops training, the last checkpoint stays valid).
        heldout: optional (M, d) rows not trained on. Every history row from step ``heldout_from``
            on then records ``fvu_heldout``, the FVU of the training objective on them (as
            ``fvu_batch`` on the batch), which the health check's plateau test reads: the FVU of
            training batches keeps falling while an SAE memorises rows it sees every epoch
            (issue 12). Training is unchanged by it.
        heldout_from: first step whose history row carries ``fvu_heldout`` (earlier rows: NaN);
            evaluations no check reads cost time on large models.

    Returns:
        A :class:`TrainResult` with the model and its history as a DataFrame.

    Raises:
        TrainingError: a batch has NaN/Inf, or the loss is non-finite or diverges (names the step).
        ValueError: ``heldout`` has the wrong shape or NaN/Inf (names the row and column).
    """
    cfg = cfg or TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if heldout is not None:
        heldout = _check_heldout(heldout, model.d_model)
    if cfg.checkpoint_dir:
        check_checkpoint_dir(cfg.checkpoint_dir)  # fail now, not at the first checkpoint
    device = torch.device(cfg.device) if cfg.device else model.W_dec.device
    model.to(device)
    heldout = heldout.to(device) if heldout is not None else None
    rank, world = dist_.info().rank, dist_.info().world_size
    source = BatchSource(data, cfg.batch_size, model.d_model, cfg.seed, rank=rank, world_size=world)
    lr = cfg.lr if cfg.lr is not None else schedules.default_lr(model.dict_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=cfg.adam_betas)
    # DDP averages gradients across ranks; buffers are reduced explicitly (synced_buffers), not
    # broadcast from rank 0; unused parameters happen (SoftSAE's frozen estimator in the hard phase).
    step_loss = (torch.nn.parallel.DistributedDataParallel(_LossModule(model), broadcast_buffers=False,
                                                          find_unused_parameters=True)
                 if world > 1 else model.loss)
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    data_id = source.fingerprint() if ckpt_dir else None
    state = _resume_or_init(model, optimizer, source, cfg, ckpt_dir, data_id, device, rank)
    start = state.start
    since_bound = int(state.since_fired.max()) if state.since_fired.numel() else 0  # ≥ max(since_fired)
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
        ctx = model.step_context(step, cfg)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
            out = step_loss(x_n, ctx)
            loss, terms = out.loss, dict(out.terms)
            dead, since_bound = _dead_mask(model, cfg, state.since_fired, since_bound)
            aux = model.auxiliary_loss(out, x_n, ctx, dead, cfg)
            if aux is not None:
                loss = loss + aux[0]
                terms.update(aux[1])
        loss_value, variance, l0 = _step_stats(loss, terms, x_n, out, device)
        _check_divergence(step, loss_value, terms, variance, cfg)
        fvu = terms.get("l2", math.nan) / max(variance, 1e-12)
        state.fvu_sum, state.fvu_count = state.fvu_sum + fvu, state.fvu_count + 1
        lr_now = _optimizer_step(model, optimizer, loss, cfg, lr, step)
        since_bound = _after_step(model, out, ctx, state, since_bound, x.shape[0] * world, world)
        terms.update(loss=loss_value, l0=l0)
        if on_step is not None:
            on_step(step, terms)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            state.history.append(_history_row(step, terms, lr_now, ctx, fvu, state.fvu_sum / state.fvu_count,
                                              state.since_fired >= cfg.dead_threshold,
                                              time.perf_counter() - t0))
            if heldout is not None:
                state.history[-1]["fvu_heldout"] = (_heldout_fvu(model, heldout, ctx) if step >= heldout_from
                                                    else math.nan)
            state.fvu_sum, state.fvu_count = 0.0, 0
            bar.set_postfix(loss=f"{loss_value:.4g}", l0=f"{terms['l0']:.1f}", refresh=False)
        bar.update(1)
        if ckpt_dir is not None and rank == 0 and ((step + 1) % cfg.checkpoint_every == 0
                                                   or step == cfg.steps - 1):
            _save(ckpt_dir, step + 1, model, cfg, optimizer, state, data_id)
    bar.close()
    model.eval()
    return TrainResult(model=model, history=pd.DataFrame(state.history), steps_run=cfg.steps - start)
