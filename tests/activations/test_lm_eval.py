"""Splicing an SAE into the LM: CE-loss recovered, ΔLM loss, KL score, surprisal."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from softsae_lib.activations.lm import block_output, hidden_at_layer, load_lm
from softsae_lib.activations.splice import (
    ce_loss_recovered,
    replace_residual,
    splice_evaluate,
    window_surprisal,
)
from softsae_lib.activations.text import Document, pack_windows

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    old = os.environ.get("SOFTSAE_CACHE")
    os.environ["SOFTSAE_CACHE"] = str(tmp_path_factory.mktemp("softsae_cache"))
    try:
        lm = load_lm("gpt2-random", seed=0,
                     random_config=dict(n_layer=3, n_embd=32, n_head=2, n_positions=64))
    finally:
        if old is None:
            os.environ.pop("SOFTSAE_CACHE")
        else:
            os.environ["SOFTSAE_CACHE"] = old
    docs = [Document(0, "a", "The cat sat on the mat and looked at the dog. " * 6),
            Document(1, "b", "Rain fell over the hills while the river rose. " * 5)]
    windows = list(pack_windows(docs, lm.tokenizer, 24, lm.bos_id, lm.pad_id, min_tokens=2))
    return lm, windows


class _Map(nn.Module):
    """Stand-in SAE whose reconstruction is ``f(x)`` (splice code only calls encode/decode)."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def encode(self, x):
        return x

    def decode(self, z):
        return self.f(z)


def test_ce_loss_recovered_formula():
    assert ce_loss_recovered(2.0, 2.0, 6.0) == 1.0
    assert ce_loss_recovered(2.0, 6.0, 6.0) == 0.0
    assert ce_loss_recovered(2.0, 3.0, 6.0) == pytest.approx(0.75)
    assert np.isnan(ce_loss_recovered(2.0, 3.0, 2.0))


def test_identity_and_zero_reconstructions_bracket_the_scores(setup):
    lm, windows = setup
    res = splice_evaluate(lm, windows, 1, {"identity": _Map(lambda z: z), "zero": _Map(torch.zeros_like),
                                           "noisy": _Map(lambda z: z + 0.5 * torch.randn_like(z))},
                          batch_size=3)
    ident, zero, noisy = (res["models"][k] for k in ("identity", "zero", "noisy"))
    assert ident["ce_sae"] == pytest.approx(res["ce_clean"], abs=1e-5)
    assert ident["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert ident["kl_score"] == pytest.approx(1.0, abs=1e-4)
    assert ident["delta_lm_loss"] == pytest.approx(0, abs=1e-5)
    assert zero["ce_sae"] == pytest.approx(res["ce_zero"], abs=1e-5)
    assert zero["kl_score"] == pytest.approx(0, abs=1e-6)
    assert res["kl_zero"] > 0 and noisy["kl_sae"] > 0
    n_text_targets = sum(int(w.valid[1:].sum()) for w in windows)
    assert res["n_tokens"] == n_text_targets


def test_replacement_only_at_text_positions(setup):
    lm, windows = setup
    w = windows[-1]  # the last window of a document has pad positions
    assert not w.valid.all()
    ids = torch.from_numpy(w.token_ids)[None]
    valid = torch.from_numpy(w.valid)[None]
    seen = []
    attn = (valid | (torch.arange(24) == 0)).long()
    with replace_residual(lm.model, 1, valid, lambda h: torch.full_like(h, 7.0)):
        # registered after the replacement hook, so it observes the replaced output
        handle = lm.model.transformer.h[1].register_forward_hook(lambda m, i, o: seen.append(block_output(o)))
        with torch.no_grad():
            lm.model(input_ids=ids, attention_mask=attn)
        handle.remove()
    clean = hidden_at_layer(lm.model, 1, ids, attn)
    patched = seen[0][0]
    assert torch.all(patched[valid[0]] == 7.0)
    torch.testing.assert_close(patched[~valid[0]], clean[0][~valid[0]])


def test_surprisal_matches_full_model_logits(setup):
    lm, windows = setup
    s = window_surprisal(lm, windows[:2])
    w = windows[0]
    ids = torch.from_numpy(w.token_ids)[None]
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0]
    manual = -torch.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    assert np.isnan(s[0, 0])
    np.testing.assert_allclose(s[0, 1:], manual.numpy(), rtol=1e-4, atol=1e-4)
