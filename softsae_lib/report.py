"""The study as a static website: ``results/<profile>/report/index.html``.

One page lists every notebook of :data:`softsae_lib.reproduce.NOTEBOOKS` (and any other the manifest
names) with its status, wall time, git SHA and headline numbers from its ``metrics.json``, links the
executed notebook rendered to HTML by nbconvert (``report/notebooks/<name>.html``, figures embedded),
and shows every PNG figure of the notebook's folder inline. Figures are embedded as data URIs and
links are relative, so the folder works from ``file://`` without a server and can be copied as is.

``python -m softsae_lib report --profile local [--out results]``, ``make report``, and
``reproduce --report`` (which ``make reproduce`` uses) build it.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softsae_lib.atomic import atomic_write_text

REPORT_DIR = "report"
MAX_HEADLINES = 24
"""Headline numbers shown per notebook (the first ones in :func:`headline_numbers` order)."""
# metrics.json keys that are settings, logs or long series rather than results.
_SKIP_KEYS = frozenset({"params", "provenance", "history", "capture", "timings", "per_class_accuracy",
                        "per_class", "model_dir"})
_LABEL_KEYS = ("model", "name", "arch", "dataset", "estimator", "layer", "k")


def format_number(v: float) -> str:
    """How the page prints a headline number (4 significant digits; integers as they are)."""
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        return str(v)
    return f"{v:.4g}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _record_label(rec: dict, index: int) -> str:
    parts = [f"{rec[k]}" for k in _LABEL_KEYS if k in rec and not isinstance(rec[k], (dict, list))]
    return " ".join(parts[:2]) if parts else f"#{index}"


def headline_numbers(metrics: dict[str, Any], limit: int = MAX_HEADLINES) -> list[tuple[str, float]]:
    """The numbers a reader looks for first, as (label, value) in the order they appear.

    Top-level scalars first, then scalars one level down (``key.sub``), then the numeric fields of
    record lists (``key[label].field``, e.g. ``models[soft].fvu``). Settings, provenance, training
    histories and timings are left out; at most ``limit`` numbers.
    """
    top, nested, records = [], [], []
    for key, value in metrics.items():
        if key in _SKIP_KEYS:
            continue
        if _is_number(value):
            top.append((key, value))
        elif isinstance(value, dict):
            for sub, v in value.items():
                if _is_number(v):
                    nested.append((f"{key}.{sub}", v))
                elif isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
                    records += _record_numbers(f"{key}.{sub}", v)
        elif isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            records += _record_numbers(key, value)
    out = [(k, float(v) if isinstance(v, float) else v) for k, v in top + nested + records]
    return [(k, v) for k, v in out if v is not None][:limit]


def _record_numbers(key: str, recs: list[dict]) -> list[tuple[str, float]]:
    out = []
    for i, rec in enumerate(recs):
        label = _record_label(rec, i)
        out += [(f"{key}[{label}].{f}", v) for f, v in rec.items()
                if _is_number(v) and f not in _LABEL_KEYS and not f.endswith("seconds")]
    return out


@dataclass
class NotebookEntry:
    """What the page shows for one notebook."""

    name: str
    status: str
    seconds: float | None
    git_sha: str | None
    headlines: list[tuple[str, float]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    """PNG files in the notebook's results folder."""
    notebook_html: str | None = None
    """Path of the rendered notebook relative to the report folder."""
    error: str | None = None


def render_notebook(ipynb: Path, out_html: Path) -> Path:
    """Executed notebook → standalone HTML with its output images embedded (nbconvert)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(ipynb), as_version=4)
    body, _ = HTMLExporter(embed_images=True).from_notebook_node(nb)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    _write(out_html, body)
    return out_html


def _write(path: Path, text: str) -> None:
    atomic_write_text(path, text)
    path.chmod(0o644)  # the atomic temp file is private; the page is meant to be handed out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def collect(profile_dir: Path, report_dir: Path, render: bool = True) -> list[NotebookEntry]:
    """One :class:`NotebookEntry` per notebook of the manifest and of the harness, in harness order."""
    from softsae_lib.reproduce import NOTEBOOKS

    manifest = _read_json(profile_dir / "manifest.json")
    runs = manifest.get("notebooks", {})
    manifest_sha = manifest.get("provenance", {}).get("git_sha")
    names = list(NOTEBOOKS) + [n for n in runs if n not in NOTEBOOKS]
    entries = []
    for name in names:
        run, folder = runs.get(name, {}), profile_dir / name
        metrics = _read_json(folder / "metrics.json")
        entry = NotebookEntry(
            name=name, status=run.get("status", "not run"), seconds=run.get("seconds"),
            git_sha=metrics.get("provenance", {}).get("git_sha") or (manifest_sha if run else None),
            headlines=headline_numbers(metrics), error=run.get("error"),
            figures=sorted(folder.glob("*.png")) if folder.is_dir() else [])
        ipynb = folder / f"{name}.ipynb"
        if render and ipynb.is_file():
            rel = Path("notebooks") / f"{name}.html"
            render_notebook(ipynb, report_dir / rel)
            entry.notebook_html = rel.as_posix()
        entries.append(entry)
    return entries


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;width:100%}th,td{border:1px solid #ccc;padding:.35em .5em;vertical-align:top}
th{background:#f0f0f0;text-align:left}td.num{text-align:right;white-space:nowrap}
.ok{color:#086308;font-weight:bold}.failed{color:#b00;font-weight:bold}.not{color:#888}
ul.h{margin:0;padding-left:1.1em;font-size:.85em;columns:2}code{font-size:.9em}
figure{display:inline-block;width:47%;margin:.5em 1%;vertical-align:top}figure img{width:100%}
figcaption{font-size:.8em;color:#555;text-align:center}
"""


def _row(e: NotebookEntry) -> str:
    esc = html.escape
    cls = {"ok": "ok", "failed": "failed"}.get(e.status, "not")
    link = (f'<a href="{esc(e.notebook_html)}">{esc(e.name)}</a>' if e.notebook_html else esc(e.name))
    seconds = "" if e.seconds is None else f"{e.seconds:.1f}"
    sha = f"<code>{esc(e.git_sha[:12])}</code>" if e.git_sha else ""
    heads = "".join(f"<li>{esc(k)} = <b>{esc(format_number(v))}</b></li>" for k, v in e.headlines)
    err = f'<div class="failed">{esc(e.error)}</div>' if e.error else ""
    return (f'<tr id="row-{esc(e.name)}"><td>{link}</td><td class="{cls}">{esc(e.status)}</td>'
            f'<td class="num">{seconds}</td><td>{sha}</td><td><ul class="h">{heads}</ul>{err}</td></tr>')


def render_index(profile: str, entries: list[NotebookEntry], provenance: dict | None = None) -> str:
    """The HTML of index.html."""
    esc = html.escape
    prov = provenance or {}
    total = sum(e.seconds or 0.0 for e in entries)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>softsae — results ({esc(profile)})</title><style>{_CSS}</style></head><body>",
        f"<h1>SoftSAE reproducibility study — profile <code>{esc(profile)}</code></h1>",
        f"<p>{sum(e.status == 'ok' for e in entries)} of {len(entries)} notebooks ran ok in "
        f"{total / 60:.1f} min; git SHA <code>{esc(str(prov.get('git_sha', 'unknown')))}</code>. "
        "Click a notebook for its executed copy with every output.</p>",
        '<table id="notebooks"><thead><tr><th>notebook</th><th>status</th><th>seconds</th>'
        "<th>git SHA</th><th>headline numbers (metrics.json)</th></tr></thead><tbody>",
        *(_row(e) for e in entries), "</tbody></table>",
    ]
    for e in entries:
        if not e.figures:
            continue
        parts.append(f'<h2 id="fig-{esc(e.name)}">{esc(e.name)}</h2>')
        parts += [f'<figure><img src="{_data_uri(p)}" alt="{esc(p.name)}"><figcaption>{esc(p.name)}'
                  "</figcaption></figure>" for p in e.figures]
    versions = prov.get("versions", {})
    if versions:
        parts.append("<p><small>" + ", ".join(f"{esc(str(k))} {esc(str(v))}" for k, v in versions.items())
                     + "</small></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(results_root: str | Path, profile: str, render: bool = True) -> Path:
    """Write ``<results_root>/<profile>/report/index.html`` (and the rendered notebooks); returns it."""
    profile_dir = Path(results_root) / profile
    if not profile_dir.is_dir():
        raise FileNotFoundError(f"{profile_dir}: no results for profile {profile!r} (run reproduce first)")
    report_dir = profile_dir / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)
    entries = collect(profile_dir, report_dir, render=render)
    prov = _read_json(profile_dir / "manifest.json").get("provenance", {})
    index = report_dir / "index.html"
    _write(index, render_index(profile, entries, prov))
    return index
