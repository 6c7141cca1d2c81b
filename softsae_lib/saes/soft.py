"""SoftSAE (Stępień et al. 2026, arXiv 2605.06610): a per-input budget k̂(x) and LapSum soft top-k.

Forward (``docs/method.md`` §1.2), with x̃ = x_n − b_dec:

    r  = ReLU(W_encᵀx̃ + b_enc)                                  (B, F)
    k̂  = clamp(k_max · σ(w₂ᵀ ReLU(A x̃ + c) + b₂), 1, F)           (B,)  "Dynamic Sparsity MLP"
    soft (training): z = r ⊙ soft_topk(r, k̂, α)
    hard (inference, final training phase): z = per-row top-⌊k̂⌋ of r, k̂ under no_grad

Loss (docs/method.md §1.3): ‖x_n − x̂_n‖² + λ_k · softplus_β(mean_b k̂ − k(t)), β = 5, plus AuxK (trainer).

Schedule (the model's own, :meth:`SoftSAE.step_context`): α anneals linearly 1 → α over
``alpha_anneal_fraction`` of the run, and the last ``hard_phase_fraction`` of the run is the 'hard'
phase (hard top-⌊k̂⌋, frozen k-estimator). The published recipe also anneals k from d
(``recipe_anneals_k``) and puts the last tenth of the run in the hard phase (:meth:`recipe_config`).

Choices, relative to the official code:
* k_max = 2k as in the LLM copy (the CLIP copy's k-annealing makes it 2d; we do not follow that).
* Inference floors k̂ (the official ``.long()``), in the hard training phase and at inference alike.
* The k-estimator's last layer and sigmoid run in float32 even under bf16 autocast, so k̂ is not
  quantised: the official LLM runs put k̂ on the bf16 grid (step 0.25 near k = 40, 4 near 640),
  which we regard as a bug. (Its wide hidden layer may still run in bf16.)
* Dead-latent tracking (and the logged L0) counts a latent as fired in the soft phase when it is
  in the hard top-⌊k̂⌋ of its row, i.e. when inference would select it. The official code counts
  any r·p > 0, which marks almost everything alive at large α; "p > ½" would mark everything
  dead at large α (then t lies above every r), switching AuxK on for the whole dictionary.
  ``fired_rule="soft_positive"`` switches to the official rule (notebook 02's ablation).
* The k-estimator reads the normalised, centred input x̃ in training and inference alike (the
  official SAEBench "Patched" class does the same; the unpatched class mutates its input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.functional import softplus

from softsae_lib.collectives import global_mean
from softsae_lib.metrics import l0_summary
from softsae_lib.ops.hard_topk import per_row_topk
from softsae_lib.ops.relu_mlp_head import relu_mlp_head
from softsae_lib.ops.soft_topk import soft_topk_gate
from softsae_lib.saes.base import SAE, LossOutput, SAEConfig, StepContext, TrainSchedule, check_k, firing
from softsae_lib.saes.schedules import annealed_alpha, fraction_steps, in_hard_phase, steps_fraction

HARD_PHASE = "hard"
FIRED_RULES = ("hard_topk", "soft_positive")


@dataclass
class SoftSAEConfig(SAEConfig):
    k: int = 32
    """Target mean budget K of the k-loss."""
    k_max: float | None = None
    """Upper end of k̂ before clamping to [1, F]; None means 2·k (official LLM code)."""
    alpha: float = 1e-4
    """Final LapSum scale α (the trainer may anneal from 1 down to it)."""
    k_loss_weight: float = 1.0
    """λ_k of the budget loss."""
    k_loss_beta: float = 5.0
    """β of the softplus budget loss (hard-coded 5 in the official code)."""
    alpha_anneal_fraction: float | None = None
    """Anneal α linearly from 1 down to ``alpha`` over this fraction of the run (None/0: no anneal)."""
    hard_phase_fraction: float = 0.0
    """Train the last fraction of the run with hard top-⌊k̂⌋ and a frozen k-estimator (0: none)."""
    fired_rule: str = "hard_topk"
    """What counts as a firing in the soft phase (dead-latent tracking, logged L0): 'hard_topk' (in the
    hard top-⌊k̂⌋ inference would select) or 'soft_positive' (the official code's r·p > 0)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self.k, self.dict_size)
        if self.k_max is not None and self.k_max < 1:
            raise ValueError(f"k_max must be ≥ 1, got {self.k_max}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.fired_rule not in FIRED_RULES:
            raise ValueError(f"fired_rule must be one of {FIRED_RULES}, got {self.fired_rule!r}")
        for name in ("alpha_anneal_fraction", "hard_phase_fraction"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")

    @classmethod
    def migrate(cls, fields: dict[str, Any], train_config: dict[str, Any] | None = None) -> dict[str, Any]:
        """Fill the schedule fields that configs saved before they existed lack: the schedule the
        saved TrainConfig asked for (its ``alpha_anneal_steps`` / ``hard_topk_steps`` of ``steps``),
        else none. Returns a new dict; fields already present are kept."""
        fields, train = dict(fields), train_config or {}
        steps = train.get("steps") or 1
        if "alpha_anneal_fraction" not in fields:
            n = train.get("alpha_anneal_steps")
            fields["alpha_anneal_fraction"] = steps_fraction(min(n, steps), steps) if n else None
        fields.setdefault("fired_rule", "hard_topk")
        if "hard_phase_fraction" not in fields:
            n = train.get("hard_topk_steps")
            fields["hard_phase_fraction"] = steps_fraction(min(n, steps), steps) if n else 0.0
        return fields

    @property
    def effective_k_max(self) -> float:
        return float(2 * self.k if self.k_max is None else self.k_max)


@dataclass
class SoftStepContext(StepContext):
    """SoftSAE's step: the generic values plus the current LapSum scale α (phase 'hard' in the
    final hard phase)."""

    alpha: float = 1e-4
    """Current LapSum scale α."""

    @property
    def hard(self) -> bool:
        """True in the final hard phase (hard top-⌊k̂⌋, frozen k-estimator)."""
        return self.phase == HARD_PHASE

    def history_values(self) -> dict[str, float | bool | str]:
        return {**super().history_values(), "alpha": self.alpha}


class SoftSAE(SAE):
    arch = "soft"
    config_cls = SoftSAEConfig
    recipe_anneals_k = True

    def _init_extra(self, gen: torch.Generator) -> None:
        F = self.dict_size
        # First layer cloned from the encoder, bias 0; second layer nn.Linear(F, 1)'s default init.
        self.k_est_W1 = torch.nn.Parameter(self.W_enc.detach().clone())
        self.k_est_b1 = torch.nn.Parameter(torch.zeros(F))
        bound = 1.0 / math.sqrt(F)
        self.k_est_w2 = torch.nn.Parameter((torch.rand(F, generator=gen) * 2 - 1) * bound)
        self.k_est_b2 = torch.nn.Parameter((torch.rand((), generator=gen) * 2 - 1) * bound)

    def k_estimator_parameters(self) -> list[torch.nn.Parameter]:
        return [self.k_est_W1, self.k_est_b1, self.k_est_w2, self.k_est_b2]

    def predict_k_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        """Continuous budget k̂: (B,) float32 in [1, F] for normalised x_n: (B, d)."""
        logit = relu_mlp_head(x_n, self.b_dec, self.k_est_W1, self.k_est_b1, self.k_est_w2, self.k_est_b2)
        with torch.autocast(x_n.device.type, enabled=False):
            k_hat = torch.sigmoid(logit) * self.config.effective_k_max
            return k_hat.clamp(1.0, float(self.dict_size))

    def predict_k(self, x: torch.Tensor) -> torch.Tensor:
        """k̂(x): (B,) for raw activations x: (B, d)."""
        self._check_input(x)
        return self.predict_k_normalized(self.normalize(x))

    def step_context(self, step: int, train: TrainSchedule) -> SoftStepContext:
        """The generic schedule plus α (annealed over ``alpha_anneal_fraction`` of the run) and
        the hard phase (the last ``hard_phase_fraction`` of the run)."""
        cfg, steps = self.config, train.steps
        frac = cfg.alpha_anneal_fraction
        anneal = max(1, fraction_steps(frac, steps)) if frac else None
        hard = in_hard_phase(step, steps, fraction_steps(cfg.hard_phase_fraction, steps))
        base = super().step_context(step, train)
        return SoftStepContext(**vars(base) | {"phase": HARD_PHASE if hard else base.phase},
                               alpha=annealed_alpha(step, cfg.alpha, anneal))

    @classmethod
    def recipe_config(cls, experiment: Any) -> dict[str, Any]:
        """The published recipe: the last tenth of the run in the hard phase, and the α anneal over
        the experiment's ``alpha_anneal_fraction`` (None: α from the first step)."""
        return {"hard_phase_fraction": 0.1,
                "alpha_anneal_fraction": getattr(experiment, "alpha_anneal_fraction", None)}

    @torch.no_grad()
    def per_sample_stats(self, x: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """{'l0', 'k_hat'}: the nonzero codes and the continuous budget k̂(x), (B,) each."""
        return {**super().per_sample_stats(x, z), "k_hat": self.predict_k(x)}

    def per_sample_summary(self, per_sample: dict[str, torch.Tensor]) -> dict[str, Any]:
        """'k_hat' (summary of k̂) and 'k_hat_at_bounds' (fraction of samples with k̂ at a clamp)."""
        k_hat = per_sample["k_hat"]
        at_bounds = (k_hat <= 1.0) | (k_hat >= min(self.config.effective_k_max, self.dict_size))
        return {"k_hat": l0_summary(k_hat), "k_hat_at_bounds": float(at_bounds.float().mean())}

    def encode_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        r = self.pre_activations(x_n).relu_()
        with torch.no_grad():
            k_hat = self.predict_k_normalized(x_n)
        return per_row_topk(r, k_hat)

    def loss(self, x_n: torch.Tensor, ctx: StepContext) -> LossOutput:
        cfg = self.config
        r = self.pre_activations(x_n).relu_()
        alpha = ctx.alpha if isinstance(ctx, SoftStepContext) else cfg.alpha
        if ctx.phase == HARD_PHASE:
            with torch.no_grad():  # frozen estimator: its grads stay None and Adam skips it
                k_hat = self.predict_k_normalized(x_n)
            z = per_row_topk(r, k_hat)
            active = z > 0
            fired, n_fired = firing(active)
            k_loss = r.new_zeros(())
        else:
            k_hat = self.predict_k_normalized(x_n)
            gate = soft_topk_gate(r, k_hat.unsqueeze(1), alpha)  # r ⊙ p, fused backward
            z = gate.z
            active = None
            if cfg.fired_rule == "soft_positive":  # the official rule: any r·p > 0 fired
                fired, n_fired = firing(z.detach() > 0)
            else:
                fired, n_fired = self._fired_hard_topk(r, k_hat, gate.top)
            # the batch mean spans all ranks under data-parallel training (exact multi-GPU gradient)
            k_loss = softplus(global_mean(k_hat) - ctx.k, beta=cfg.k_loss_beta)
        recon = self.decode_normalized(z)
        l2 = self.recon_loss(x_n, recon)
        loss = l2 + cfg.k_loss_weight * k_loss
        terms = {"l2": l2.item(), "k_loss": k_loss.item(), "k_hat_mean": k_hat.mean().item(),
                 "k_hat_std": k_hat.std().item() if k_hat.numel() > 1 else 0.0}
        return LossOutput(loss, recon, r, fired, n_fired, terms, active=active)

    @torch.no_grad()
    def _fired_hard_topk(self, r: torch.Tensor, k_hat: torch.Tensor, top: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """(F,) fired mask and firing count of the hard top-⌊k̂⌋ selection, read off the gate's
        sorted window top: (B, K) instead of comparing all of r: (B, F)."""
        rank = torch.arange(top.shape[1], device=r.device)
        chosen = (rank < k_hat.detach().floor().unsqueeze(1)) & (r.gather(1, top) > 0)
        fired = torch.zeros(self.dict_size, dtype=torch.bool, device=r.device)
        fired[top[chosen]] = True
        return fired, chosen.sum()

