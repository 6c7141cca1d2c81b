"""Reproduction harness: execute every notebook with Papermill under one profile.

``python -m softsae_lib reproduce --profile smoke|local|paper [--only NAME ...]`` first checks what the
selected notebooks need (:mod:`softsae_lib.preflight`: data files, optional packages, disk space) and
stops at once, one line per problem, if anything is missing. It then runs each notebook in
:data:`NOTEBOOKS` with ``profile`` and ``out_dir`` injected into its cell tagged ``parameters``.

Nothing is clobbered: a notebook writes into ``results/<profile>/.staging/<notebook>/``, which replaces
``results/<profile>/<notebook>/`` only when the notebook succeeded. A failed notebook leaves the
previous results untouched and its partial outputs in ``results/<profile>/<notebook>.failed/``.
``results/<profile>/manifest.json`` (versions, git SHA, seed, wall time, status) is rewritten
atomically after every notebook, so an interrupted run still records what finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from softsae_lib import preflight
from softsae_lib.atomic import atomic_write_text
from softsae_lib.profiles import PROFILES, get_profile
from softsae_lib.provenance import provenance
from softsae_lib.resources import repo_root
from softsae_lib.settings import Settings

_ROOT = repo_root()
NOTEBOOK_DIR: Path | None = _ROOT / "notebooks" if _ROOT is not None else None
"""The checkout's notebooks (None when the package is installed without a clone)."""
# Execution order; the names are also the profile keys in softsae_lib.profiles.
NOTEBOOKS: tuple[str, ...] = ("00_train_vit_cifar10", "01_soft_topk", "02_synthetic_manifolds", "03_gpt2",
                              "04_vit", "05_architectures")
STAGING = ".staging"
FAILED_SUFFIX = ".failed"


class ReproduceError(RuntimeError):
    """A problem the user must fix before the notebooks can run (printed as one line, exit 2)."""


@dataclass
class NotebookRun:
    name: str
    status: str
    """'ok' or 'failed'."""
    seconds: float
    output: str
    """Path of the executed notebook."""
    error: str | None = None


def notebook_setup(name: str, profile: str, out_dir: str | None) -> tuple[Settings, Path | None]:
    """What every notebook does first: its profile's parameters, its output folder (created),
    the global torch seed set from the profile, and figures laid out so that titles never overlap."""
    import matplotlib
    import torch

    matplotlib.rcParams["figure.constrained_layout.use"] = True
    params = get_profile(name, profile)
    out = Path(out_dir) if out_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(params.seed)
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


def _notebook_dir() -> Path:
    if NOTEBOOK_DIR is None:
        raise ReproduceError("the notebooks are not installed with the package: reproduction runs from a "
                             "clone of the repository (git clone …; make reproduce)")
    return NOTEBOOK_DIR


def run_notebook(name: str, profile: str, results_root: Path, log=print) -> NotebookRun:
    """Execute one notebook under ``profile``; never raises for a failing cell (see the status).

    The notebook runs in a staging folder; on success it replaces ``<root>/<profile>/<name>``, on
    failure it becomes ``<root>/<profile>/<name>.failed`` and the previous results stay as they were.
    """
    import papermill

    source = _notebook_dir() / f"{name}.ipynb"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such notebook (known: {', '.join(NOTEBOOKS)})")
    profile_dir = results_root.resolve() / profile
    stage = profile_dir / STAGING / name
    if stage.exists():
        shutil.rmtree(stage)  # left by an interrupted run
    stage.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source), str(stage / f"{name}.ipynb"), parameters={"profile": profile, "out_dir": str(stage)},
            kernel_name="python3", progress_bar=False, cwd=str(source.parent))
    except Exception as err:  # papermill raises PapermillExecutionError for a failing cell
        message = _describe_failure(name, err)
        failed = _replace_dir(stage, profile_dir / f"{name}{FAILED_SUFFIX}")
        log(f"[reproduce] {message}; previous results kept, partial output in {failed}")
        shown = results_root / profile / failed.name / f"{name}.ipynb"
        return NotebookRun(name, "failed", time.perf_counter() - t0, str(shown), message)
    _replace_dir(stage, profile_dir / name)
    stale = profile_dir / f"{name}{FAILED_SUFFIX}"
    if stale.exists():
        shutil.rmtree(stale)
    shown = results_root / profile / name / f"{name}.ipynb"
    return NotebookRun(name, "ok", time.perf_counter() - t0, str(shown))


def _replace_dir(src: Path, dst: Path) -> Path:
    """Move folder ``src`` to ``dst``, replacing it; the old ``dst`` is removed only after the move."""
    old = dst.with_name(f".{dst.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old)
    return dst


def read_manifest(path: Path) -> dict:
    """The manifest of an earlier run ({} when none); a damaged one is a :class:`ReproduceError`."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReproduceError(f"{path}: damaged manifest from an earlier run ({err}); move or delete it and "
                             f"run again") from err
    if not isinstance(data, dict) or not isinstance(data.get("notebooks", {}), dict):
        raise ReproduceError(f"{path}: damaged manifest from an earlier run (expected an object with a "
                             f"'notebooks' object); move or delete it and run again")
    return data


def check_results_root(root: Path) -> None:
    """``root`` can hold results: a writable folder (created when missing)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except (FileExistsError, NotADirectoryError) as err:
        raise ReproduceError(f"{root}: results folder cannot be created: {err.filename or root} is a file "
                             f"(choose another --out)") from err
    except OSError as err:
        raise ReproduceError(f"{root}: results folder is not writable ({err.strerror}; choose another "
                             f"--out)") from err


def reproduce(profile: str, only: list[str] | None = None, results_root: str | Path = "results",
              log=print, check_needs: bool = True) -> list[NotebookRun]:
    """Run the notebooks (all, or ``only`` these), updating the manifest after each; one record each.

    Raises :class:`ReproduceError` before any notebook runs when something they need is missing
    (``check_needs``), the results folder is unusable, or an earlier manifest is damaged.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    names = list(NOTEBOOKS) if not only else list(only)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; known: {list(NOTEBOOKS)}")
    _notebook_dir()
    root = Path(results_root)
    check_results_root(root / profile)
    manifest_path = root / profile / "manifest.json"
    manifest = read_manifest(manifest_path)
    if check_needs:
        problems = preflight.check(names, profile)
        if problems:
            raise ReproduceError("cannot start, missing:\n  - " + "\n  - ".join(problems))
    notebooks = manifest.get("notebooks", {})
    runs: list[NotebookRun] = []
    for i, name in enumerate(names, 1):
        log(f"[reproduce] ({i}/{len(names)}) {name} — profile {profile} …")
        run = run_notebook(name, profile, root, log)
        runs.append(run)
        log(f"[reproduce] ({i}/{len(names)}) {name}: {run.status} in {run.seconds:.0f}s")
        notebooks[run.name] = {
            "status": run.status, "seconds": round(run.seconds, 1), "output": run.output,
            "error": run.error, "seed": get_profile(run.name, profile).seed,
        }
        atomic_write_text(manifest_path, json.dumps(
            {"profile": profile, "notebooks": notebooks, "provenance": provenance()}, indent=2))
    with contextlib.suppress(OSError):  # only when empty: nothing of a concurrent run is removed
        (root / profile / STAGING).rmdir()
    return runs


def runs_table(runs: list[NotebookRun]) -> str:
    lines = [f"{'notebook':<28}{'status':<8}{'seconds':>8}  output"]
    lines += [f"{r.name:<28}{r.status:<8}{r.seconds:>8.0f}  {r.output}" for r in runs]
    return "\n".join(lines)


def main(profile: str, only: list[str] | None, results_root: str, report: bool = False) -> int:
    try:
        runs = reproduce(profile, only, results_root)
    except ReproduceError as err:
        print(f"reproduce: {err}", file=sys.stderr)
        return 2
    print(runs_table(runs))
    if report:  # also after a failure: the page shows which notebook failed and why
        from softsae_lib.report import build_report

        print(f"[reproduce] report: {build_report(results_root, profile)}")
    failed = [r for r in runs if r.status != "ok"]
    for r in failed:
        print(f"FAILED: {r.error}", file=sys.stderr)
    return 1 if failed else 0
