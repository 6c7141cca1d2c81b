"""Reproduction harness: execute every notebook with Papermill under one profile.

``python -m softsae_lib reproduce --profile smoke|local|paper [--only NAME ...]`` runs each
notebook in :data:`NOTEBOOKS` with ``profile`` and ``out_dir`` injected into its cell tagged
``parameters``; the notebook reads its settings from :mod:`softsae_lib.profiles` and writes its
metrics and figures into ``out_dir``. The executed notebook lands beside them as
``results/<profile>/<notebook>/<notebook>.ipynb`` (kept, partial, when a cell fails), and
``results/<profile>/manifest.json`` records versions, git SHA, seed, wall time and status.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from softsae_lib.atomic import atomic_write_text
from softsae_lib.profiles import PROFILES, get_profile
from softsae_lib.provenance import provenance

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
# Execution order; the names are also the profile keys in softsae_lib.profiles.
NOTEBOOKS: tuple[str, ...] = ("00_train_vit_cifar10", "01_soft_topk", "02_synthetic_manifolds", "03_gpt2",
                              "04_vit", "05_architectures")


@dataclass
class NotebookRun:
    name: str
    status: str
    """'ok' or 'failed'."""
    seconds: float
    output: str
    """Path of the executed notebook."""
    error: str | None = None


def notebook_setup(name: str, profile: str, out_dir: str | None) -> tuple[dict, Path | None]:
    """What every notebook does first: its profile's parameters, its output folder (created),
    and the global torch seed set from the profile."""
    import torch

    params = get_profile(name, profile)
    out = Path(out_dir) if out_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(params.get("seed", 0))
    return params, out


def _describe_failure(name: str, err: Exception) -> str:
    cell = getattr(err, "cell_index", None)
    if cell is not None:
        src = (getattr(err, "source", "") or "").strip().splitlines()
        first = src[0] if src else ""
        return (f"notebook {name} failed in cell {cell} (execution count {getattr(err, 'exec_count', '?')}, "
                f"starting {first!r}): {getattr(err, 'ename', type(err).__name__)}: "
                f"{getattr(err, 'evalue', err)}")
    return f"notebook {name} failed: {type(err).__name__}: {err}"


def run_notebook(name: str, profile: str, results_root: Path, log=print) -> NotebookRun:
    """Execute one notebook under ``profile``; never raises for a failing cell (see the status)."""
    import papermill

    source = NOTEBOOK_DIR / f"{name}.ipynb"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such notebook (known: {', '.join(NOTEBOOKS)})")
    out_dir = results_root / profile / name
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{name}.ipynb"
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source), str(output), parameters={"profile": profile, "out_dir": str(out_dir.resolve())},
            kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOK_DIR))
    except Exception as err:  # papermill raises PapermillExecutionError for a failing cell
        message = _describe_failure(name, err)
        log(f"[reproduce] {message}; partial output kept in {output}")
        return NotebookRun(name, "failed", time.perf_counter() - t0, str(output), message)
    return NotebookRun(name, "ok", time.perf_counter() - t0, str(output))


def reproduce(profile: str, only: list[str] | None = None, results_root: str | Path = "results",
              log=print) -> list[NotebookRun]:
    """Run the notebooks (all, or ``only`` these) and write the manifest; returns one record each."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    names = list(NOTEBOOKS) if not only else list(only)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; known: {list(NOTEBOOKS)}")
    root = Path(results_root)
    runs: list[NotebookRun] = []
    for i, name in enumerate(names, 1):
        log(f"[reproduce] ({i}/{len(names)}) {name} — profile {profile} …")
        run = run_notebook(name, profile, root, log)
        runs.append(run)
        log(f"[reproduce] ({i}/{len(names)}) {name}: {run.status} in {run.seconds:.0f}s")
    manifest_path = root / profile / "manifest.json"
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    notebooks = previous.get("notebooks", {})
    for run in runs:
        notebooks[run.name] = {
            "status": run.status, "seconds": round(run.seconds, 1), "output": run.output,
            "error": run.error, "seed": get_profile(run.name, profile).get("seed"),
        }
    atomic_write_text(manifest_path, json.dumps(
        {"profile": profile, "notebooks": notebooks, "provenance": provenance()}, indent=2))
    return runs


def summary_table(runs: list[NotebookRun]) -> str:
    lines = [f"{'notebook':<28}{'status':<8}{'seconds':>8}  output"]
    lines += [f"{r.name:<28}{r.status:<8}{r.seconds:>8.0f}  {r.output}" for r in runs]
    return "\n".join(lines)


def main(profile: str, only: list[str] | None, results_root: str, report: bool = False) -> int:
    runs = reproduce(profile, only, results_root)
    print(summary_table(runs))
    if report:  # also after a failure: the page shows which notebook failed and why
        from softsae_lib.report import build_report

        print(f"[reproduce] report: {build_report(results_root, profile)}")
    failed = [r for r in runs if r.status != "ok"]
    for r in failed:
        print(f"FAILED: {r.error}", file=sys.stderr)
    return 1 if failed else 0
