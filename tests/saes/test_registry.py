"""The public registry: third-party architectures register by name, duplicates are refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from softsae_lib.saes import ARCHITECTURES, SAE, TopKSAE, make_sae, register_sae

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_architectures_are_registered_once_each():
    assert {"soft", "topk", "batch_topk", "jumprelu", "relu", "matryoshka", "feature_choice", "mutual_choice",
            "sparsemax_attention", "tree"} == set(ARCHITECTURES)
    assert all(cls.arch == name for name, cls in ARCHITECTURES.items())
    assert register_sae(TopKSAE) is TopKSAE and ARCHITECTURES["topk"] is TopKSAE  # same class: no-op


def test_a_second_class_under_a_taken_name_is_refused():
    class Impostor(TopKSAE):
        arch = "topk"

    with pytest.raises(ValueError, match="'topk' is already registered by softsae_lib.saes.topk.TopKSAE"):
        register_sae(Impostor)
    assert ARCHITECTURES["topk"] is TopKSAE


def test_only_named_sae_subclasses_register():
    class Nameless(TopKSAE):
        arch = ""

    with pytest.raises(TypeError, match="arch"):
        register_sae(Nameless)
    with pytest.raises(TypeError, match="subclass of softsae_lib.saes.SAE"):
        register_sae(dict)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown SAE architecture 'nope'"):
        make_sae("nope", d_model=4, dict_size=8)
    assert issubclass(TopKSAE, SAE)


def test_readme_example_adds_an_architecture(tmp_path):
    """The README's "Adding an architecture" example runs as written (in a fresh process, so the new
    name does not leak into this one)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- example: adding-an-architecture -->\n```python\n(.*?)```", readme, re.S)
    assert block, "README lost its 'Adding an architecture' example"
    code = block.group(1) + "\nfrom softsae_lib.saes import ARCHITECTURES\nprint(sorted(ARCHITECTURES))\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'abs_topk'" in proc.stdout
    assert (tmp_path / "runs" / "abs_topk").is_dir()
