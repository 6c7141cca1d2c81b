"""Tree SAE (Cao, Nhat, Alharbi, Nguyen, Thai 2026, arXiv 2605.07922; code tue147/tree-sae;
docs/sae-variants.md §8).

The dictionary is split into L privilege layers of sizes s_1…s_L with per-layer budgets k_1…k_L.
Every feature of layer l ≥ 2 has one parent: a feature of an earlier layer or the always-active
root (layer 1 hangs from the root). With z = W_encᵀ(x − b_dec) + b_enc:

* **Activation coverage** (Eq. 6): layer by layer, μ_i = 1[parent(i) active] (activation > 1e-3;
  the root is always active) and the layer keeps TopK_{k_l}(z ⊙ μ) of its own features; ReLU at the
  end. A child can only fire where its parent fires. Inference uses the same gated TopK.
* **Cumulative losses** (Eqs. 3, 7): L = Σ_l ‖x − x̂_l‖² / Var(x) + α Σ_{l∈A} L_aux^l with
  x̂_l = Σ_{t≤l} W_dec⁽ᵗ⁾ f⁽ᵗ⁾ + b_dec (Matryoshka-style prefixes ending at layer boundaries) and
  Var(x) the batch's total variance. AuxK (Eq. 8) runs per layer in A (default: the first) on that
  layer's dead features, gated by their parents, against the residual x − x̂_l.
* **Dynamic allocation** (Algorithms 1–2, Eq. 10): each step the step's loss is split equally among
  the candidate parents that fired (root included) and added to their capacity C_p. Every R steps
  (R doubles, capped) the quotas k*_p maximising min_p C_p/k_p are computed greedily over parents
  that fired recently; only *dead* children move, from over-quota to under-quota parents; the
  capacities reset. At ``root_reset_step`` every dead child is attached to the root and
  allocation stops.

Choices of ours (the sources are silent or we deliberately differ):
* The library's dataset normalisation replaces the paper's per-token standardisation (N3), so all
  architectures in a comparison see the same inputs; there is an encoder bias b_enc (the code has
  none). AuxK has no b_dec (docs/sae-variants.md §0; the code adds it).
* Dead tracking, AuxK and reallocation use this model's own counters (``dead_tokens``; the parents'
  eligibility needs them), not the trainer's dead mask. The per-layer AuxK stays inside
  :meth:`TreeSAE.loss` (it is part of the cumulative loss, Eq. 3, whose value the allocation reads),
  so the default :meth:`~softsae_lib.saes.base.SAE.auxiliary_loss` is off (``uses_auxk = False``).
* The trainer's annealed k is ignored: per-layer budgets are fixed, as in the code.
* Initial parents are uniform over the root and all earlier features (seeded); a moved child keeps
  its weights and its dead counter.
* Single-process training only: :meth:`after_step` refuses data-parallel runs, whose per-rank
  reallocations would let the trees diverge.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch

from softsae_lib.ops.hard_topk import per_row_topk
from softsae_lib.saes.auxk import auxk_loss
from softsae_lib.saes.base import SAE, LossOutput, SAEConfig, StepContext


def _split(total: int, fractions: tuple[float, ...]) -> tuple[int, ...]:
    """round(f_l·total) for l ≥ 2; the first part takes the remainder."""
    tail = [int(round(f * total)) for f in fractions[1:]]
    return (total - sum(tail), *tail)


@dataclass
class TreeConfig(SAEConfig):
    k: int = 32
    """Total budget Σ_l k_l, split by ``k_fractions`` unless ``layer_k`` is given."""
    layer_fractions: tuple[float, ...] = (0.25, 0.75)
    """Fractions of F per privilege layer (paper 2-layer: 6144/18432 of 24576)."""
    layer_sizes: tuple[int, ...] | None = None
    """Explicit layer sizes (sum F); overrides ``layer_fractions``."""
    k_fractions: tuple[float, ...] = (26 / 32, 6 / 32)
    """Share of k per layer (paper 2-layer L0 = 32: [26, 6])."""
    layer_k: tuple[int, ...] | None = None
    """Explicit per-layer budgets; overrides ``k`` and ``k_fractions``."""
    active_threshold: float = 1e-3
    """A parent is active (and a feature has fired) when its activation exceeds this."""
    aux_layers: tuple[int, ...] = (0,)
    """0-based layers that get the per-layer AuxK loss (paper: the first only)."""
    aux_alpha: float = 1 / 32
    """Weight α of the per-layer AuxK losses."""
    k_aux: int = 256
    """Dead features per sample in each layer's AuxK (capped at the layer's dead count)."""
    dead_tokens: int = 10_000_000
    """A feature is dead after this many consecutive training samples without firing."""
    eligible_tokens: int = 50_000
    """Only parents that fired within this many samples can receive children."""
    realloc_every: int = 3000
    """Steps before the first reallocation."""
    realloc_growth: float = 2.0
    """The reallocation interval is multiplied by this after every reallocation."""
    realloc_max: int = 10_000
    """Cap of the reallocation interval."""
    root_reset_step: int | None = 50_000
    """At this step every dead child is attached to the root and allocation stops (None: never)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("layer_fractions", "k_fractions", "aux_layers", "layer_sizes", "layer_k"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(value))
        sizes, ks = self.resolved_layer_sizes(), self.resolved_layer_k()
        if min(sizes) < 1 or sum(sizes) != self.dict_size:
            raise ValueError(f"Tree layer sizes {list(sizes)} must be ≥ 1 and sum to "
                             f"dict_size={self.dict_size}")
        if len(ks) != len(sizes):
            raise ValueError(f"{len(ks)} layer budgets for {len(sizes)} layers")
        if ks[0] < 1 or any(kk < 0 or kk > s for kk, s in zip(ks, sizes, strict=True)):
            raise ValueError(f"per-layer budgets {list(ks)} must lie in [0, layer size] (first ≥ 1); "
                             f"layer sizes {list(sizes)}")
        if any(not 0 <= a < len(sizes) for a in self.aux_layers):
            raise ValueError(f"aux_layers {list(self.aux_layers)} must index the {len(sizes)} layers")
        if self.realloc_every < 1 or self.realloc_growth < 1 or self.realloc_max < 1:
            raise ValueError("realloc_every and realloc_max must be ≥ 1 and realloc_growth ≥ 1")

    def resolved_layer_sizes(self) -> tuple[int, ...]:
        if self.layer_sizes is not None:
            return self.layer_sizes
        return _split(self.dict_size, self.layer_fractions)

    def resolved_layer_k(self) -> tuple[int, ...]:
        return self.layer_k if self.layer_k is not None else _split(self.k, self.k_fractions)


def greedy_quotas(capacity: torch.Tensor, n_children: int, eligible: torch.Tensor) -> torch.Tensor:
    """Integer quotas k_p (Σ = n_children) maximising min_p C_p/k_p (Algorithm 1, Theorem 4.1).

    One child at a time goes to the eligible parent with the largest C_p/(k_p + 1). Parents with
    C_p = 0 get nothing; if no eligible parent has C_p > 0 the children are spread evenly over the
    eligible ones. capacity, eligible: (P,); returns (P,) long.
    """
    caps = capacity.detach().double().cpu().tolist()
    ok = eligible.detach().cpu().tolist()
    quotas = [0] * len(caps)
    heap = [(-c, p) for p, c in enumerate(caps) if ok[p] and c > 0]
    heapq.heapify(heap)
    if heap:
        for _ in range(n_children):
            _, p = heapq.heappop(heap)
            quotas[p] += 1
            heapq.heappush(heap, (-caps[p] / (quotas[p] + 1), p))
    else:
        ids = [p for p in range(len(caps)) if ok[p]]
        for j in range(n_children if ids else 0):
            quotas[ids[j % len(ids)]] += 1
    return torch.tensor(quotas, dtype=torch.long, device=capacity.device)


class TreeSAE(SAE):
    arch = "tree"
    config_cls = TreeConfig
    uses_auxk = False  # per-layer AuxK is computed in loss()

    def _init_extra(self, gen: torch.Generator) -> None:
        F = self.dict_size
        parent = torch.full((F,), -1, dtype=torch.long)
        for layer, (start, end) in enumerate(self.layer_bounds):
            if layer:  # uniform over the root (drawn as `start`) and every earlier feature
                draw = torch.randint(0, start + 1, (end - start,), generator=gen)
                parent[start:end] = torch.where(draw == start, -1, draw)
        self.register_buffer("parent", parent)
        self.register_buffer("since_fired", torch.zeros(F, dtype=torch.long))
        # Capacity C_p per layer l ≥ 2 over candidate parents 0…F−1, with the root at index F.
        self.register_buffer("capacity", torch.zeros(max(1, self.n_layers - 1), F + 1, dtype=torch.float64))
        self.register_buffer("alloc_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("since_realloc", torch.zeros((), dtype=torch.long))
        self.register_buffer("realloc_interval", torch.tensor(self.config.realloc_every, dtype=torch.long))
        self.register_buffer("root_reset_done", torch.tensor(False))

    # ------------------------------------------------------------------ structure
    @property
    def layer_bounds(self) -> list[tuple[int, int]]:
        bounds, start = [], 0
        for size in self.config.resolved_layer_sizes():
            bounds.append((start, start + size))
            start += size
        return bounds

    @property
    def n_layers(self) -> int:
        return len(self.config.resolved_layer_sizes())

    def children_of(self, p: int) -> torch.Tensor:
        """Indices of the features whose parent is ``p`` (−1 for the root)."""
        return (self.parent == p).nonzero().flatten()

    def gated_codes(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Activation coverage on pre-activations z: (B, F).

        Returns codes (B, F) (ReLU applied) and, per layer, its (B, s_l) parent-active mask.
        """
        thr, ks = self.config.active_threshold, self.config.resolved_layer_k()
        blocks, masks = [], []
        for layer, (start, end) in enumerate(self.layer_bounds):
            if layer == 0:
                mask = torch.ones_like(z[:, start:end], dtype=torch.bool)
            else:
                so_far = torch.cat(blocks, dim=1).detach() > thr  # (B, start)
                parents_active = torch.cat([so_far, so_far.new_ones(z.shape[0], 1)], dim=1)
                pidx = self.parent[start:end]
                mask = parents_active[:, torch.where(pidx < 0, start, pidx)]
            masks.append(mask)
            blocks.append(per_row_topk(z[:, start:end] * mask, ks[layer]))
        return torch.relu(torch.cat(blocks, dim=1)), masks

    def encode_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        return self.gated_codes(self.pre_activations(x_n))[0]

    def loss(self, x_n: torch.Tensor, ctx: StepContext) -> LossOutput:
        cfg = self.config
        z = self.pre_activations(x_n)
        codes, masks = self.gated_codes(z)
        variance = (x_n - x_n.mean(dim=0)).pow(2).sum(dim=-1).mean().clamp_min(1e-12)
        recon = self.b_dec.expand(x_n.shape[0], -1)
        per_layer, dead = [], self.since_fired >= cfg.dead_tokens
        aux_total = z.new_zeros(())
        for layer, (start, end) in enumerate(self.layer_bounds):
            recon = recon + codes[:, start:end] @ self.W_dec[start:end]
            per_layer.append(self.recon_loss(x_n, recon))
            if layer in cfg.aux_layers and cfg.aux_alpha > 0:
                gated = torch.relu(z[:, start:end]) * masks[layer]
                aux_total = aux_total + auxk_loss(gated, x_n - recon, dead[start:end],
                                                  self.W_dec[start:end], cfg.k_aux)
        loss = torch.stack(per_layer).sum() / variance + cfg.aux_alpha * aux_total
        terms = {"l2": per_layer[-1].item(), "auxk": aux_total.item(),
                 "dead_fraction_model": dead.float().mean().item()}
        terms.update({f"l2_layer{j + 1}": v.item() for j, v in enumerate(per_layer[:-1])})
        return LossOutput.from_active(loss, recon, torch.relu(z.detach()), codes > cfg.active_threshold,
                                      terms)

    # ------------------------------------------------------------------ dynamic allocation
    @torch.no_grad()
    def after_step(self, out: LossOutput, ctx: StepContext) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            # Parents, dead counters and capacities would have to be reduced *before* reallocating
            # (max over ranks for firing, sum for capacities) to keep the tree identical on every rank.
            raise NotImplementedError("TreeSAE does not support data-parallel training yet")
        fired = out.fired
        self.since_fired.copy_(torch.where(fired, torch.zeros_like(self.since_fired),
                                           self.since_fired + out.recon.shape[0]))
        self.alloc_steps.add_(1)
        self.since_realloc.add_(1)
        if bool(self.root_reset_done) or self.n_layers < 2:
            return
        loss = float(out.loss.detach())
        for layer, (start, _) in enumerate(self.layer_bounds[1:], start=1):
            share = loss / (int(fired[:start].sum()) + 1)  # +1: the root always counts as fired
            self.capacity[layer - 1, :start] += fired[:start].double() * share
            self.capacity[layer - 1, -1] += share
        cfg = self.config
        if cfg.root_reset_step is not None and int(self.alloc_steps) >= cfg.root_reset_step:
            self.attach_dead_children_to_root()
            self.root_reset_done.fill_(True)
        elif int(self.since_realloc) >= int(self.realloc_interval):
            self.reallocate_dead_children()
            self.since_realloc.zero_()
            grown = int(int(self.realloc_interval) * cfg.realloc_growth)
            self.realloc_interval.fill_(min(cfg.realloc_max, grown))

    @torch.no_grad()
    def attach_dead_children_to_root(self) -> None:
        dead = self.since_fired >= self.config.dead_tokens
        dead[: self.layer_bounds[0][1]] = False  # layer 1 is already on the root
        self.parent[dead] = -1

    @torch.no_grad()
    def reallocate_dead_children(self) -> int:
        """Algorithm 2: move dead children towards the greedy quotas; returns how many moved."""
        cfg, moved = self.config, 0
        dead_all = self.since_fired >= cfg.dead_tokens
        for layer, (start, end) in enumerate(self.layer_bounds[1:], start=1):
            cap = torch.cat([self.capacity[layer - 1, :start], self.capacity[layer - 1, -1:]])
            eligible = torch.cat([self.since_fired[:start] < cfg.eligible_tokens,
                                  torch.ones(1, dtype=torch.bool, device=cap.device)])
            local = torch.where(self.parent[start:end] < 0, start, self.parent[start:end])  # root → start
            counts = torch.bincount(local, minlength=start + 1)
            quotas = greedy_quotas(cap, end - start, eligible)
            dead = dead_all[start:end]
            movers = [(local == p).logical_and(dead).nonzero().flatten()[: int(extra)]
                      for p, extra in enumerate((counts - quotas).clamp_min(0).tolist()) if extra > 0]
            receivers = [torch.full((int(n),), p, dtype=torch.long, device=cap.device)
                         for p, n in enumerate((quotas - counts).clamp_min(0).tolist()) if n > 0]
            if movers and receivers:
                who, to = torch.cat(movers), torch.cat(receivers)
                n = min(who.numel(), to.numel())
                to = to[:n]
                self.parent[start + who[:n]] = torch.where(to == start, -1, to)
                moved += n
            self.capacity[layer - 1].zero_()
        return moved
