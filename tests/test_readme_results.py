"""The README's results block is written from metrics.json files, and a stale block is caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softsae_lib.readme_results import BEGIN, END, ReadmeError, claim, render, section, update_readme

ROOT = Path(__file__).resolve().parents[1]


def results_dir(tmp_path: Path, estimate: float = 0.812345) -> Path:
    root = tmp_path / "local"
    (root / "02_synthetic_manifolds").mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps({
        "profile": "local", "provenance": {"git_sha": "abc123"},
        "notebooks": {"01_soft_topk": {"seconds": 6.0}, "02_synthetic_manifolds": {"seconds": 600.0}}}))
    entry = section("Synthetic (`02`)", "Setup with F = 128.",
                    [claim("Spearman(k̂, d)", estimate, 0.5, 0.9, "conclusive", "bound 0.95", "6/6 healthy"),
                     claim("Spearman(L0, d)", -0.25, None, None, "inconclusive")],
                    models=[{"model": "soft", "seed": 0, "fvu": 0.0123, "l0": 8.4, "dead": 0.2,
                             "healthy": False},
                            {"model": "soft", "seed": 1, "fvu": 0.0127, "l0": 8.6, "dead": 0.3,
                             "healthy": True},
                            {"model": "max |x|", "seed": 0, "fvu": 0.5, "l0": 2, "dead": 0, "healthy": True}],
                    notes=["A note."])
    (root / "02_synthetic_manifolds" / "metrics.json").write_text(json.dumps({"readme": entry}))
    return root


def test_render_formats_claims_models_and_timings(tmp_path):
    text = render(results_dir(tmp_path))
    assert "commit `abc123`" in text and "10.1 min" in text and "02 10.0 min" in text
    assert "| Spearman(k̂, d) | 0.812 [0.5, 0.9] | bound 0.95 | conclusive | 6/6 healthy |" in text
    assert "| Spearman(L0, d) | −0.25 |  | **inconclusive** |  |" in text
    assert "| soft | 2 | 0.0125 | 8.5 | 0.25 | 1/2 |" in text and text.rstrip().endswith("A note.")
    assert "| max \\|x\\| | 1 | 0.5 | 2 | 0 | 1/1 |" in text  # a | inside a cell is escaped


def test_update_writes_only_between_the_markers_and_check_catches_drift(tmp_path):
    root = results_dir(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{BEGIN}\nold numbers\n{END}\nafter\n")
    assert update_readme(readme, root) is False
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n") and text.endswith(f"{END}\nafter\n")
    assert "old numbers" not in text
    assert update_readme(readme, root, check=True) is True
    results_dir(tmp_path, estimate=0.7)  # the results change: the README is now stale
    with pytest.raises(ReadmeError, match="differs"):
        update_readme(readme, root, check=True)


def test_missing_markers_results_and_bad_verdicts_are_named(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(ReadmeError, match="needs exactly one"):
        update_readme(readme, results_dir(tmp_path))
    with pytest.raises(ReadmeError, match="no manifest"):
        render(tmp_path / "nothing")
    with pytest.raises(ValueError, match="verdict"):
        claim("x", 1.0, verdict="maybe")


def test_readme_block_is_what_the_committed_local_results_give():
    # the README's numbers cannot drift from results/local: regenerate with `make readme`
    assert update_readme(ROOT / "README.md", ROOT / "results" / "local", check=True)
