"""Capture a language model's residual stream at one layer into an :mod:`activation cache <.cache>`.

Loop: documents → windows (:func:`~softsae_lib.activations.text.pack_windows`) → batches of
windows → truncated forward (:func:`~softsae_lib.activations.lm.hidden_at_layer`) → the vectors
of real text positions (BOS and pad excluded) → norm-outlier filter → cache, with the per-row
columns ``token_id``, ``doc_id``, ``position`` (index in the window, BOS = 0) and ``window``.

Norm-outlier filter (as in the SoftSAE LLM pipeline): within each forward batch, tokens whose
‖x‖ exceeds ``outlier_factor`` × the batch's median norm are dropped (attention-sink tokens with
huge norms would otherwise dominate the SAE's loss); the count is kept in the manifest.

Resume: the manifest's progress records how many windows are done after each shard, so a rerun
with the same settings skips them (the windows are re-tokenised, not re-run through the model);
a finished cache with the same meta is returned at once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from softsae_lib.activations.cache import ActivationCache, CacheWriter
from softsae_lib.activations.lm import LanguageModel, cache_root, check_layer, hidden_at_layer
from softsae_lib.activations.text import Document, pack_windows

COLUMNS = ("token_id", "doc_id", "position", "window")


@dataclass
class CaptureConfig:
    """What to capture and how (every field except progress/device goes into the cache's meta)."""

    layer: int
    """Residual stream after this block (0-based; see softsae_lib.activations.lm)."""
    context_len: int = 128
    """Tokens per window, BOS included."""
    batch_size: int = 16
    """Windows per forward pass."""
    max_tokens: int | None = None
    """Stop once this many tokens are stored (None: all windows)."""
    max_windows_per_doc: int | None = None
    """Use only each document's first windows (None: all)."""
    outlier_factor: float | None = 10.0
    """Drop tokens with norm above this multiple of the batch median (None: keep all)."""
    dtype: str = "float32"
    """Storage dtype: float32 or float16."""
    shard_rows: int = 16384
    """Rows per cache shard (approximate: shards end between batches); an interruption loses at most one."""
    device: str = "cpu"
    """Where the model runs."""
    progress: bool | None = None
    """tqdm bar: True, False, or None for 'only on a terminal'."""

    def meta(self) -> dict:
        d = asdict(self)
        for key in ("device", "progress", "shard_rows", "batch_size"):
            d.pop(key)
        return d


def documents_fingerprint(docs: Sequence[Document]) -> str:
    """SHA-256 over the documents' ids, sources and texts (the cache is keyed by it)."""
    h = hashlib.sha256()
    for d in docs:
        h.update(f"{d.doc_id}\t{d.source}\t".encode())
        h.update(hashlib.sha256(d.text.encode()).digest())
    return h.hexdigest()


def capture_meta(lm: LanguageModel, docs: Sequence[Document], cfg: CaptureConfig, dataset: str) -> dict:
    return {**lm.meta(), **cfg.meta(), "dataset": dataset, "n_documents": len(docs),
            "documents_sha256": documents_fingerprint(docs)}


def cache_key(meta: dict) -> str:
    """Short stable hash of a capture's meta, for naming its cache folder."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]


def select_tokens(h: torch.Tensor, valid: torch.Tensor,
                  outlier_factor: float | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rows to keep from one batch.

    Args:
        h: (B, T, d) hidden states; valid: (B, T) bool, True at text positions.
    Returns:
        (flat_index (n,) into the B·T positions, vectors (n, d), number dropped as outliers).
    """
    flat = valid.reshape(-1).nonzero().squeeze(1)
    x = h.reshape(-1, h.shape[-1])[flat]
    dropped = 0
    if outlier_factor is not None and x.shape[0]:
        norms = x.norm(dim=1)
        keep = norms <= outlier_factor * norms.median()
        dropped = int((~keep).sum())
        flat, x = flat[keep], x[keep]
    return flat, x, dropped


def capture(lm: LanguageModel, docs: Sequence[Document], cache_dir: str | Path, cfg: CaptureConfig,
            dataset: str = "custom") -> ActivationCache:
    """Capture layer ``cfg.layer`` of ``lm`` over ``docs`` into ``cache_dir`` (resumable).

    Returns the finished, verified :class:`ActivationCache`. Raises ``CacheMismatchError`` when
    ``cache_dir`` holds a capture made with other settings.
    """
    check_layer(lm.model, cfg.layer)
    meta = capture_meta(lm, docs, cfg, dataset)
    writer = CacheWriter(cache_dir, lm.d_model, meta, COLUMNS, dtype=cfg.dtype, shard_rows=cfg.shard_rows)
    if writer.complete:
        return ActivationCache(cache_dir)
    done = writer.progress
    windows_done = int(done.get("windows_done", 0))
    stored, dropped = writer.rows_written, int(done.get("tokens_dropped", 0))
    seconds = float(done.get("seconds", 0.0))
    quiet = None if cfg.progress is None else not cfg.progress
    bar = tqdm(total=cfg.max_tokens, initial=stored, unit="tok", unit_scale=True, disable=quiet,
               desc=f"capture {lm.name} L{cfg.layer}", dynamic_ncols=True)
    windows = pack_windows(docs, lm.tokenizer, cfg.context_len, lm.bos_id, lm.pad_id,
                           max_windows_per_doc=cfg.max_windows_per_doc)

    def run(batch: list, first_index: int) -> None:
        nonlocal stored, dropped, seconds
        t0 = time.perf_counter()
        ids = torch.from_numpy(np.stack([w.token_ids for w in batch])).to(cfg.device)
        valid = torch.from_numpy(np.stack([w.valid for w in batch])).to(cfg.device)
        mask = valid.clone()
        if lm.bos_id is not None:
            mask[:, 0] = True  # BOS is attended to, only not captured
        h = hidden_at_layer(lm.model, cfg.layer, ids, mask.long()).float()
        flat, x, n_drop = select_tokens(h, valid, cfg.outlier_factor)
        if cfg.max_tokens is not None:
            flat, x = flat[:cfg.max_tokens - stored], x[:cfg.max_tokens - stored]
        T = ids.shape[1]
        row, pos = (flat // T).cpu(), (flat % T).cpu()
        doc = torch.tensor([w.doc_id for w in batch])[row]
        seconds += time.perf_counter() - t0
        stored += x.shape[0]
        dropped += n_drop
        progress = {"windows_done": first_index + len(batch), "tokens_dropped": dropped,
                    "seconds": round(seconds, 3)}
        writer.append(x.cpu(), progress=progress, token_id=ids.reshape(-1)[flat].cpu(), doc_id=doc,
                      position=pos, window=row + first_index)
        bar.update(x.shape[0])
        bar.set_postfix(tok_s=f"{stored / max(seconds, 1e-9):.0f}", dropped=dropped, refresh=False)

    batch: list = []
    first = 0
    with torch.inference_mode():
        for i, w in enumerate(windows):
            if cfg.max_tokens is not None and stored >= cfg.max_tokens:
                break
            if i < windows_done:
                continue
            if not batch:
                first = i
            batch.append(w)
            if len(batch) == cfg.batch_size:
                run(batch, first)
                batch = []
        if batch and (cfg.max_tokens is None or stored < cfg.max_tokens):
            run(batch, first)
    bar.close()
    if stored == 0:
        raise ValueError(f"capture into {cache_dir}: no tokens captured from {len(docs)} documents "
                         f"(texts empty or shorter than the minimum window)")
    writer.finish(progress={"tokens_per_second": round(stored / max(seconds, 1e-9), 1)})
    return ActivationCache(cache_dir)


def capture_cached(lm: LanguageModel, docs: Sequence[Document], cfg: CaptureConfig, dataset: str,
                   root: str | Path | None = None) -> ActivationCache:
    """:func:`capture` into ``<root>/<model>-L<layer>-<hash of the meta>`` (default root:
    ``cache_root()/activations``): a rerun with the same model, text and settings reuses the cache,
    an interrupted one resumes it, and any change of settings gets a fresh folder."""
    meta = capture_meta(lm, docs, cfg, dataset)
    folder = Path(root) if root else cache_root() / "activations"
    name = f"{lm.name.replace('/', '_')}-L{cfg.layer}-{cache_key(meta)}"
    return capture(lm, docs, folder / name, cfg, dataset)
