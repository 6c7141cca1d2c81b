"""The README's results block, written from ``results/<profile>/*/metrics.json`` (issue 12 §4).

Every notebook stores a ``readme`` entry in its metrics.json (built with :func:`section` and
:func:`claim`): a title, a one-paragraph setup, its claims (estimate, CI, the bound or control it is
judged against, and a verdict that is "conclusive" only when every model the claim rests on passed its
health check), optionally a model table and notes. :func:`render` turns those entries, in notebook
order, into Markdown; ``python -m softsae_lib readme`` writes it between the two markers in README.md
and ``--check`` fails when the README differs (a test runs the check on ``results/local``), so no
number in the block can drift from the results it claims to come from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from softsae_lib.atomic import atomic_write_text

BEGIN = ("<!-- results:begin (written by `python -m softsae_lib readme`; edit the notebooks, "
         "not this block) -->")
END = "<!-- results:end -->"
MODEL_COLUMNS = ("model", "seeds", "fvu", "l0", "dead", "healthy")
"""Columns of a section's model table: one row per model, FVU / L0 / dead averaged over its seeds."""


class ReadmeError(ValueError):
    """The README lacks the markers, or the results are missing or malformed (named)."""


def _num(v: Any, digits: int = 3) -> str:
    """How the block prints a value: 3 significant digits (integers as they are), – for missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e6):
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.{digits}g}".replace("-", "−")
    return str(v)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (a literal | would end the cell)."""
    return str(text).replace("|", "\\|")


def claim(text: str, estimate: float | None, ci_low: float | None = None, ci_high: float | None = None,
          verdict: str = "inconclusive", judged_against: str = "", rests_on: str = "") -> dict:
    """One claim of a notebook: ``text`` (what is estimated), the estimate and its CI, what it is judged
    against (a bound, a control, a baseline, with its value), the verdict and the models it rests on."""
    if verdict not in ("conclusive", "inconclusive"):
        raise ValueError(f"verdict must be 'conclusive' or 'inconclusive', got {verdict!r}")
    def as_float(v: float | None) -> float | None:
        return None if v is None else float(v)

    return {"claim": text, "estimate": as_float(estimate), "ci_low": as_float(ci_low),
            "ci_high": as_float(ci_high), "judged_against": judged_against, "verdict": verdict,
            "rests_on": rests_on}


def _per_model(rows: Sequence[dict]) -> list[dict]:
    """Rows (one per model and seed: model, fvu, l0, dead, healthy) → one per model, in first-seen order."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r["model"]), []).append(r)
    out = []
    for name, rs in groups.items():
        mean = {k: sum(float(r[k]) for r in rs) / len(rs) for k in ("fvu", "l0", "dead")}
        healthy = sum(bool(r["healthy"]) for r in rs)
        out.append({"model": name, "seeds": len(rs), **mean, "healthy": f"{healthy}/{len(rs)}"})
    return out


def section(title: str, setup: str, claims: Sequence[dict], models: Sequence[dict] = (),
            notes: Sequence[str] = ()) -> dict:
    """The ``readme`` entry of a notebook's metrics.json.

    ``models``: one dict per trained model (and seed) with ``model``, ``fvu``, ``l0``, ``dead`` and
    ``healthy``;
    the block shows one row per model name with the means over its seeds and how many were healthy.
    """
    return {"title": title, "setup": setup, "claims": list(claims), "models": _per_model(models),
            "notes": list(notes)}


def _render_section(entry: dict, where: str) -> list[str]:
    try:
        lines = [f"### {entry['title']}", "", entry["setup"], ""]
        lines += ["| claim | estimate [95% CI] | judged against | verdict | rests on |",
                  "|---|---|---|---|---|"]
        for c in entry["claims"]:
            ci = (f" [{_num(c['ci_low'])}, {_num(c['ci_high'])}]"
                  if c.get("ci_low") is not None and c.get("ci_high") is not None else "")
            verdict = "conclusive" if c["verdict"] == "conclusive" else "**inconclusive**"
            cells = (c["claim"], f"{_num(c['estimate'])}{ci}", c.get("judged_against", ""), verdict,
                     c.get("rests_on", ""))
            lines.append("| " + " | ".join(_cell(v) for v in cells) + " |")
        if entry.get("models"):
            lines += ["", "| " + " | ".join(MODEL_COLUMNS) + " |", "|" + "---|" * len(MODEL_COLUMNS)]
            for m in entry["models"]:
                lines.append("| " + " | ".join(_cell(_num(m.get(k))) for k in MODEL_COLUMNS) + " |")
        for note in entry.get("notes", []):
            lines += ["", note]
    except (KeyError, TypeError) as err:
        raise ReadmeError(f"{where}: malformed 'readme' entry ({type(err).__name__}: {err})") from err
    return lines + [""]


def render(results_dir: str | Path, notebooks: Sequence[str] | None = None) -> str:
    """The Markdown of the block (without markers) from ``results_dir``'s manifest and metrics files."""
    from softsae_lib.reproduce import NOTEBOOKS

    root = Path(results_dir)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise ReadmeError(f"{manifest_path}: no manifest (run `make reproduce` first)")
    manifest = json.loads(manifest_path.read_text())
    runs = manifest.get("notebooks", {})
    total = sum(float(r.get("seconds", 0.0)) for r in runs.values())
    sha = (manifest.get("provenance") or {}).get("git_sha") or "unknown"
    times = ", ".join(f"{name[:2]} {float(r.get('seconds', 0)) / 60:.1f} min" for name, r in runs.items())
    lines = [f"Results of commit `{sha}`, profile `{manifest.get('profile', root.name)}`: notebooks took "
             f"{total / 60:.1f} min ({times}).", ""]
    for name in notebooks or NOTEBOOKS:
        path = root / name / "metrics.json"
        if not path.is_file():
            continue
        entry = json.loads(path.read_text()).get("readme")
        if entry is not None:
            lines += _render_section(entry, str(path))
    return "\n".join(lines).rstrip() + "\n"


def _split(text: str, readme: Path) -> tuple[str, str, str]:
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ReadmeError(f"{readme}: needs exactly one '{BEGIN}' line followed by one '{END}' line")
    head, rest = text.split(BEGIN, 1)
    body, tail = rest.split(END, 1)
    return head, body, tail


def update_readme(readme: str | Path, results_dir: str | Path, check: bool = False) -> bool:
    """Write the block into ``readme`` (atomically); with ``check``, only compare.

    Returns True when the README already matched. With ``check`` a mismatch raises :class:`ReadmeError`.
    """
    readme = Path(readme)
    head, body, tail = _split(readme.read_text(), readme)
    block = "\n" + render(results_dir)
    if body == block:
        return True
    if check:
        raise ReadmeError(f"{readme}: the results block differs from what {results_dir} gives; "
                          f"run `python -m softsae_lib readme --out {Path(results_dir).parent}`")
    atomic_write_text(readme, head + BEGIN + block + END + tail)
    return False
