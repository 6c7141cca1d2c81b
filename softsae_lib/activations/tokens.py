"""Per-token views of captured LM activations: unigram frequency, values by token, HTML shading."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import pandas as pd


def log_unigram_frequency(reference_ids: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
    """log of each token's add-one-smoothed relative frequency in ``reference_ids``.

    Args:
        reference_ids: (M,) token ids of a reference corpus (e.g. the training tokens).
        token_ids: (N,) ids to look up. Returns (N,) float64.
    """
    ids, counts = np.unique(np.asarray(reference_ids), return_counts=True)
    lookup = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    c = np.array([lookup.get(int(t), 0) for t in np.asarray(token_ids)], dtype=np.float64)
    return np.log((c + 1.0) / (len(reference_ids) + len(ids) + 1.0))


def token_strings(tokenizer, token_ids: Sequence[int]) -> list[str]:
    """Each id decoded on its own (byte-level BPE pieces of a multi-byte character may show as �)."""
    return [tokenizer.decode([int(t)]) for t in token_ids]


def values_by_token(token_ids: np.ndarray, values: np.ndarray, tokenizer, min_count: int = 5,
                    n: int = 15) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tokens with the lowest and the highest mean of ``values`` (e.g. k̂), among tokens seen at least
    ``min_count`` times. Returns (lowest, highest) frames with token, count, mean, std."""
    frame = pd.DataFrame({"token_id": np.asarray(token_ids), "value": np.asarray(values, dtype=float)})
    g = frame.groupby("token_id")["value"].agg(["count", "mean", "std"]).reset_index()
    g = g[g["count"] >= min_count]
    g.insert(1, "token", token_strings(tokenizer, g["token_id"]))
    g["token"] = g["token"].map(repr)
    return g.nsmallest(n, "mean").reset_index(drop=True), g.nlargest(n, "mean").reset_index(drop=True)


def _colour(value: float, vmin: float, vmax: float, cmap) -> str:
    t = 0.5 if vmax <= vmin else float(np.clip((value - vmin) / (vmax - vmin), 0, 1))
    r, g, b, _ = cmap(t)
    return f"rgb({int(255 * r)},{int(255 * g)},{int(255 * b)})"


def shaded_tokens_html(pieces: Sequence[str], values: Sequence[float], title: str, vmin: float, vmax: float,
                       value_name: str = "k̂", cmap_name: str = "viridis") -> str:
    """One HTML block: each text piece on a background coloured by its value (NaN: no colour).

    Hovering a token shows its value. Light text is used on the dark end of the colour map.
    """
    import matplotlib

    cmap = matplotlib.colormaps[cmap_name]
    spans = []
    for piece, v in zip(pieces, values, strict=True):
        text = html.escape(piece).replace("\n", "↵<br>")
        if v is None or not np.isfinite(v):
            spans.append(f'<span style="color:#888" title="not scored">{text}</span>')
            continue
        t = 0.5 if vmax <= vmin else (v - vmin) / (vmax - vmin)
        fg = "#fff" if t < 0.45 else "#000"
        spans.append(f'<span style="background:{_colour(v, vmin, vmax, cmap)};color:{fg}" '
                     f'title="{value_name} = {v:.2f}">{text}</span>')
    legend = (f'<div style="font-size:11px;color:#555">colour: {html.escape(value_name)} from '
              f'{vmin:.1f} (dark) to {vmax:.1f} (light); grey = not scored (BOS, pad or norm outlier)</div>')
    return (f'<div style="font-family:monospace;line-height:1.7;margin-bottom:12px">'
            f'<div style="font-weight:bold">{html.escape(title)}</div>{legend}{"".join(spans)}</div>')


def html_page(blocks: Sequence[str], title: str) -> str:
    """A standalone HTML document holding ``blocks``."""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><h3>{html.escape(title)}</h3>{''.join(blocks)}</body></html>")


def token_frame(cache, x: np.ndarray, surprisal: np.ndarray, reference_ids: np.ndarray) -> pd.DataFrame:
    """One row per cached token with the covariates of the k̂ analysis.

    Args:
        cache: the held-out :class:`~softsae_lib.activations.cache.ActivationCache` (LM columns).
        x: (N, d) its vectors (raw, before any SAE normalisation).
        surprisal: (n_windows, T) per-position surprisal of the cache's windows
            (:func:`~softsae_lib.activations.splice.window_surprisal`).
        reference_ids: training token ids, for the unigram frequency.
    Returns:
        Columns token_id, doc_id, window, position, norm (‖x‖₂), log_position, log_freq, surprisal.
    """
    cols = {c: cache.column(c) for c in ("token_id", "doc_id", "window", "position")}
    frame = pd.DataFrame(cols)
    frame["norm"] = np.linalg.norm(np.asarray(x, dtype=np.float64), axis=1)
    frame["log_position"] = np.log(frame["position"].to_numpy(dtype=float))
    frame["log_freq"] = log_unigram_frequency(reference_ids, cols["token_id"])
    frame["surprisal"] = surprisal[cols["window"], cols["position"]]
    if frame["surprisal"].isna().any():
        bad = int(frame["surprisal"].isna().sum())
        raise ValueError(f"{bad} cached token(s) have no surprisal: the windows passed do not match "
                         f"the cache")
    return frame
