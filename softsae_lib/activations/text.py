"""Text for activation capture: document sources, the train/held-out split, packing into windows.

A *document* is the unit of the train/held-out split and of the cluster bootstrap: a WikiText
article (split at its top-level ``= Title =`` headings), a passage of about ``passage_words``
words of a Gutenberg book (cut at paragraph breaks; whole books would leave only 18 clusters),
a .txt file of a user folder, or a row of a Hugging Face dataset.

Packing (:func:`pack_windows`): every document is tokenised on its own and cut into windows of
``context_len`` tokens, each starting with the model's BOS token; no window spans two documents,
so a token's context is always its own document. A document's last window is padded (pad
positions are flagged invalid and never captured); tails shorter than ``min_tokens`` are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from softsae_lib.resources import WIKITEXT_FILES, gutenberg_files, read_data_bytes


@dataclass(frozen=True)
class Document:
    doc_id: int
    """Index of the document in its corpus (stable for a given source and settings)."""
    source: str
    """Where it came from, e.g. 'wikitext-2/valid.txt#Homarus gammarus' or 'gutenberg/austen-emma.txt#3'."""
    text: str


@dataclass
class Window:
    """One context window: token ids and per-position annotations, all of shape (context_len,)."""

    token_ids: np.ndarray
    """int64 token ids (BOS first, pad at the end of a document's last window)."""
    valid: np.ndarray
    """bool: True for real text tokens (False for BOS and pad)."""
    doc_id: int
    start: int
    """Offset of the window's first text token within its document's token sequence."""


_WIKI_HEADING = re.compile(r"^ = [^=].* = $")


def wikitext_documents(path: str | Path) -> list[tuple[str, str]]:
    """(title, text) of each article of a WikiText file (tokenised release, `` = Title = `` headings)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: WikiText file not found")
    return _wikitext_articles(path.read_text(encoding="utf-8"))


def passages(text: str, words: int) -> list[str]:
    """``text`` cut at paragraph breaks (blank lines) into passages of about ``words`` words or more."""
    out, current, count = [], [], 0
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        current.append(para)
        count += len(para.split())
        if count >= words:
            out.append("\n\n".join(current))
            current, count = [], 0
    if current:
        out.append("\n\n".join(current))
    return out


def _decode_text(data: bytes) -> str:
    """UTF-8 (else Latin-1: Gutenberg files are Latin-1 safe) with universal newlines, as text-mode
    reading gives: four of the Gutenberg books have CRLF line ends, and a stray CR is a token."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_txt(path: Path) -> str:
    return _decode_text(path.read_bytes())


def _wikitext_articles(text: str) -> list[tuple[str, str]]:
    """(title, text) of each article of a WikiText text (tokenised release, `` = Title = `` headings)."""
    docs: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if _WIKI_HEADING.match(line):
            docs.append((line.strip(" =").strip(), [line.strip()]))
        elif docs and line.strip():
            docs[-1][1].append(line.strip())
    return [(title, "\n".join(lines)) for title, lines in docs]


def offline_wikitext() -> list[tuple[str, str]]:
    """(source, text) of every WikiText-2 valid then test article, from the project's data folder."""
    out = []
    for rel in WIKITEXT_FILES:
        name = Path(rel).name.removesuffix(".xz")
        text = _decode_text(read_data_bytes(rel))
        out += [(f"wikitext-2/{name}#{title}", t) for title, t in _wikitext_articles(text)]
    return out


def offline_gutenberg(passage_words: int) -> list[tuple[str, str]]:
    """(source, passage) of the 18 Gutenberg books of the project's data folder, in file-name order."""
    out = []
    for rel in gutenberg_files():
        name = Path(rel).name.removesuffix(".xz")
        parts = passages(_decode_text(read_data_bytes(rel)), passage_words)
        out += [(f"gutenberg/{name}#{i}", p) for i, p in enumerate(parts)]
    return out


def folder_documents(folder: str | Path, passage_words: int | None = None,
                     label: str | None = None) -> list[tuple[str, str]]:
    """(source, text) for each .txt file of ``folder`` (sorted), each cut into passages if asked."""
    folder = Path(folder)
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .txt files")
    label = label or folder.name
    out = []
    for f in files:
        text = _read_txt(f)
        parts = passages(text, passage_words) if passage_words else [text]
        out += [(f"{label}/{f.name}#{i}", p) for i, p in enumerate(parts)]
    return out


def hf_documents(name: str, config: str | None = None, split: str = "train", text_field: str = "text",
                 max_documents: int | None = None) -> list[tuple[str, str]]:
    """Documents of a Hugging Face dataset (needs ``datasets`` and a network).

    WikiText datasets (one line per row) are regrouped into articles at their headings.
    """
    try:
        from datasets import load_dataset  # optional dependency, only for online use
    except ImportError as err:
        raise ImportError(f"text source hf:{name} needs the `datasets` package (pip install datasets) "
                          f"and a network") from err

    rows = load_dataset(name, config, split=split, streaming=True)
    out: list[tuple[str, str]] = []
    if name.split("/")[-1].startswith("wikitext"):
        lines: list[str] = []
        for row in rows:
            line = row[text_field].rstrip("\n")
            if _WIKI_HEADING.match(line) and lines:
                out.append((f"{name}#{len(out)}", "\n".join(lines)))
                if max_documents and len(out) >= max_documents:
                    return out
                lines = []
            if line.strip():
                lines.append(line.strip())
        if lines:
            out.append((f"{name}#{len(out)}", "\n".join(lines)))
        return out[:max_documents] if max_documents else out
    for i, row in enumerate(rows):
        if max_documents and i >= max_documents:
            break
        out.append((f"{name}#{i}", row[text_field]))
    return out


def load_documents(source: str = "offline", passage_words: int = 2000,
                   max_documents: int | None = None) -> list[Document]:
    """Documents from a named source.

    ``source``: ``"offline"`` (WikiText-2 valid+test articles, then Gutenberg passages, from the
    project's ``data/`` folder, see :mod:`softsae_lib.resources`), ``"wikitext-2"``, ``"gutenberg"``,
    ``"hf:NAME[:CONFIG[:SPLIT]]"`` (e.g.
    ``"hf:Salesforce/wikitext:wikitext-103-raw-v1:train"``, online), or a folder of .txt files.
    Empty documents are skipped; ids are consecutive in the order listed.
    """
    raw: list[tuple[str, str]] = []
    if source in ("offline", "wikitext-2"):
        raw += offline_wikitext()
    if source in ("offline", "gutenberg"):
        raw += offline_gutenberg(passage_words)
    if source.startswith("hf:"):
        parts = source[3:].split(":")
        raw = hf_documents(parts[0], parts[1] if len(parts) > 1 else None,
                           parts[2] if len(parts) > 2 else "train", max_documents=max_documents)
    elif source not in ("offline", "wikitext-2", "gutenberg"):
        if not Path(source).is_dir():
            raise ValueError(f"unknown text source {source!r}: use 'offline', 'wikitext-2', 'gutenberg', "
                             f"'hf:NAME[:CONFIG[:SPLIT]]' or an existing folder of .txt files")
        raw = folder_documents(source, passage_words)
    raw = [(s, t) for s, t in raw if t.strip()]
    if max_documents is not None:
        raw = raw[:max_documents]
    return [Document(i, s, t) for i, (s, t) in enumerate(raw)]


def split_documents(docs: Sequence[Document], held_out_fraction: float = 0.1,
                    seed: int = 0) -> tuple[list[Document], list[Document]]:
    """Random train/held-out split by document (no document contributes to both sides)."""
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    if len(docs) < 2:
        raise ValueError(f"need at least 2 documents to split, got {len(docs)}")
    order = np.random.default_rng(seed).permutation(len(docs))
    n_test = min(len(docs) - 1, max(1, round(held_out_fraction * len(docs))))
    test_idx = set(order[:n_test].tolist())
    train = [d for i, d in enumerate(docs) if i not in test_idx]
    test = [d for i, d in enumerate(docs) if i in test_idx]
    return train, test


def interleave(docs: Sequence[Document], seed: int = 0) -> list[Document]:
    """The documents in a seeded random order, so that a token budget samples every source."""
    order = np.random.default_rng(seed).permutation(len(docs))
    return [docs[i] for i in order]


def pack_windows(docs: Sequence[Document], tokenizer, context_len: int, bos_id: int | None,
                 pad_id: int = 0, min_tokens: int = 16,
                 max_windows_per_doc: int | None = None) -> Iterator[Window]:
    """Windows of ``context_len`` tokens (BOS + text, padded at a document's end), in document order.

    Args:
        docs: documents, each tokenised separately (no special tokens added by the tokenizer).
        tokenizer: a Hugging Face tokenizer (``tokenizer(text, add_special_tokens=False).input_ids``).
        bos_id: token placed at position 0 of every window (None: no BOS, all text).
        pad_id: filler after a document's last token (masked out of attention and capture).
        min_tokens: a document's final window is dropped when it holds fewer text tokens.
        max_windows_per_doc: keep only a document's first windows (more documents for a token
            budget, hence more clusters for the bootstrap); None keeps all.
    """
    body = context_len - (bos_id is not None)
    if body < 1:
        raise ValueError(f"context_len {context_len} leaves no room for text")
    for doc in docs:
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        for n, start in enumerate(range(0, len(ids), body)):
            if max_windows_per_doc is not None and n >= max_windows_per_doc:
                break
            chunk = ids[start:start + body]
            if len(chunk) < min(min_tokens, body):
                break
            tokens = np.full(context_len, pad_id, dtype=np.int64)
            valid = np.zeros(context_len, dtype=bool)
            offset = 0 if bos_id is None else 1
            if bos_id is not None:
                tokens[0] = bos_id
            tokens[offset:offset + len(chunk)] = chunk
            valid[offset:offset + len(chunk)] = True
            yield Window(tokens, valid, doc.doc_id, start)
