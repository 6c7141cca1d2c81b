"""Downstream fidelity: splice an SAE's reconstruction into the LM (docs/sae-variants.md §10, "Downstream").

On the same windows the model runs once clean, once with the residual stream after block L set
to 0 (zero ablation), and once per SAE with it replaced by the SAE's reconstruction x̂ (raw,
de-normalised space). Replacement happens only at text positions (never BOS or pad), through a
forward hook on block L. From the next-token cross-entropies over every position whose target is
a text token (predictions from positions 0…T−2, i.e. targets 1…T−1):

* ΔLM loss = CE_SAE − CE_clean;
* CE-loss recovered = (CE_zero − CE_SAE) / (CE_zero − CE_clean) (SAEBench ``ce_loss_score`` with
  zero ablation);
* KL score = (KL_zero − KL_SAE) / KL_zero, with KL = mean over tokens of KL(p_clean ‖ p_patched).

The clean pass also yields each token's surprisal −log p(x_t | x_<t), a covariate of the k̂
analysis (:func:`window_surprisal`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from softsae_lib.activations.lm import LanguageModel, block_output, check_layer, decoder_layers
from softsae_lib.activations.text import Window
from softsae_lib.saes.base import SAE


@contextlib.contextmanager
def replace_residual(model: torch.nn.Module, layer: int, where: torch.Tensor,
                     fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Inside the ``with``, block ``layer``'s output h (B, T, d) is ``fn(h)`` where ``where`` (B, T)."""
    block = decoder_layers(model)[check_layer(model, layer)]

    def hook(_module, _inputs, output):
        h = block_output(output)
        new = torch.where(where[..., None], fn(h).to(h.dtype), h)
        if isinstance(output, (tuple, list)):
            return (new, *output[1:])
        return new

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _stack(windows: Sequence[Window], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.from_numpy(np.stack([w.token_ids for w in windows])).to(device)
    valid = torch.from_numpy(np.stack([w.valid for w in windows])).to(device)
    attn = valid.clone()
    attn[:, 0] = True  # position 0 (BOS when present) is attended to, only never replaced
    return ids, valid, attn


def _logprobs(model, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=attn.long(), use_cache=False).logits
    return F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V): predictions of targets 1…T-1


def _sae_fn(sae: SAE) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(h: torch.Tensor) -> torch.Tensor:
        flat = h.reshape(-1, h.shape[-1]).float()
        return sae.decode(sae.encode(flat)).reshape(h.shape)
    return fn


def _patched_sums(model, layer: int, ids: torch.Tensor, attn: torch.Tensor, valid: torch.Tensor,
                  clean: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple[float, float]:
    """Summed CE and KL(p_clean ‖ p_patched) over text targets with block ``layer`` patched by ``fn``."""
    with replace_residual(model, layer, valid, fn):
        lp = _logprobs(model, ids, attn)
    target_ok = valid[:, 1:]
    ce = -lp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    kl = (clean.exp() * (clean - lp)).sum(-1)
    return float(ce[target_ok].sum()), float(kl[target_ok].sum())


@torch.no_grad()
def splice_evaluate(lm: LanguageModel, windows: Sequence[Window], layer: int,
                    saes: Mapping[str, SAE], batch_size: int = 8, with_ablation: bool = True) -> dict:
    """CE-loss recovered, ΔLM loss and KL score of each SAE spliced in at ``layer``.

    Args:
        lm: the language model the activations came from.
        windows: held-out windows (:func:`~softsae_lib.activations.text.pack_windows`).
        layer: the captured block.
        saes: name → trained SAE on the raw activations of ``layer``.
        with_ablation: run the zero-ablation and SAE passes (False: clean pass only, for surprisal).

    Returns:
        ``{"ce_clean", "ce_zero", "kl_zero", "n_tokens", "models": {name: {"ce_sae", "delta_lm_loss",
        "ce_loss_recovered", "kl_sae", "kl_score"}}, "surprisal": (n_windows, T) array}``; surprisal is
        NaN where position t is BOS or pad.
    """
    if not windows:
        raise ValueError("splice_evaluate: no windows")
    model = lm.model
    device = next(model.parameters()).device
    for sae in saes.values():
        sae.eval().to(device)
    sums = {"clean": 0.0, "zero": 0.0, "kl_zero": 0.0}
    sums.update({f"ce:{n}": 0.0 for n in saes})
    sums.update({f"kl:{n}": 0.0 for n in saes})
    n_tokens = 0
    surprisal = []
    for s in range(0, len(windows), batch_size):
        ids, valid, attn = _stack(windows[s:s + batch_size], device)
        target_ok = valid[:, 1:]  # (B, T-1): the target of this prediction is a text token
        targets = ids[:, 1:].unsqueeze(-1)
        clean = _logprobs(model, ids, attn)
        ce_clean = -clean.gather(-1, targets).squeeze(-1)
        surp = torch.full(ids.shape, float("nan"), device=device)
        surp[:, 1:] = torch.where(target_ok, ce_clean, torch.nan)
        surprisal.append(surp.cpu().numpy())
        n_tokens += int(target_ok.sum())
        sums["clean"] += float(ce_clean[target_ok].sum())
        if not with_ablation:
            continue
        ce, kl = _patched_sums(model, layer, ids, attn, valid, clean, torch.zeros_like)
        sums["zero"] += ce
        sums["kl_zero"] += kl
        for name, sae in saes.items():
            ce, kl = _patched_sums(model, layer, ids, attn, valid, clean, _sae_fn(sae))
            sums[f"ce:{name}"] += ce
            sums[f"kl:{name}"] += kl
    if n_tokens == 0:
        raise ValueError("splice_evaluate: the windows hold no text tokens")
    ce_clean, ce_zero, kl_zero = (sums[k] / n_tokens for k in ("clean", "zero", "kl_zero"))
    if not with_ablation:
        ce_zero = kl_zero = float("nan")
    models = {}
    for name in saes:
        ce_sae, kl_sae = sums[f"ce:{name}"] / n_tokens, sums[f"kl:{name}"] / n_tokens
        kl_score = (kl_zero - kl_sae) / kl_zero if kl_zero > 0 else float("nan")
        models[name] = {"ce_sae": ce_sae, "delta_lm_loss": ce_sae - ce_clean,
                        "ce_loss_recovered": ce_loss_recovered(ce_clean, ce_sae, ce_zero),
                        "kl_sae": kl_sae, "kl_score": kl_score}
    return {"ce_clean": ce_clean, "ce_zero": ce_zero, "kl_zero": kl_zero, "n_tokens": n_tokens,
            "models": models, "surprisal": np.concatenate(surprisal)}


def ce_loss_recovered(ce_clean: float, ce_sae: float, ce_ablated: float) -> float:
    """(CE_abl − CE_SAE)/(CE_abl − CE_clean): 1 = as good as the clean model, 0 = as bad as ablation."""
    denom = ce_ablated - ce_clean
    if abs(denom) < 1e-12:
        return float("nan")
    return (ce_ablated - ce_sae) / denom


def window_surprisal(lm: LanguageModel, windows: Sequence[Window], batch_size: int = 8) -> np.ndarray:
    """−log p(x_t | x_<t) of every position, (n_windows, T), NaN at BOS/pad (clean pass only)."""
    return splice_evaluate(lm, windows, lm.default_layer, {}, batch_size, with_ablation=False)["surprisal"]
