"""What a notebook needs before it runs: data files, optional packages, disk space.

:func:`check` is called by the reproduction harness before the first notebook starts, so that a
missing file or package fails in seconds with one line per problem, instead of after minutes of
training in a later notebook. The needs are derived from the same profile parameters the notebooks
read, so the check cannot drift from what they load.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from softsae_lib.atomic import cache_root
from softsae_lib.profiles import get_profile
from softsae_lib.resources import (
    CIFAR10_TAR,
    GPT2_TOKENIZER_FILES,
    WIKITEXT_FILES,
    DataFileError,
    gutenberg_files,
    missing_data,
    read_checksums,
)
from softsae_lib.resources import data_dir as _data_dir

# Rough cache sizes (decoded images, dequantised weights, activation captures), MB per profile.
_CACHE_MB = {"smoke": 50, "local": 1500, "paper": 200_000}
_USES_CACHE = {"00_train_vit_cifar10", "03_gpt2", "04_vit", "05_architectures"}
_LOCAL_EXTRAS = "make reproduce installs them; by hand: pip install --no-deps -r requirements-local.txt"


def _text_files(source: str) -> list[str]:
    """Data files read by a text source of :func:`softsae_lib.activations.text.load_documents`."""
    files: list[str] = []
    if source in ("offline", "wikitext-2"):
        files += WIKITEXT_FILES
    if source in ("offline", "gutenberg"):
        files += gutenberg_files()
    return files


def _lm_needs(model: str, text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(data files, (module, how to get it)) for one LM arm."""
    from softsae_lib.activations.lm import PRESETS

    files = _text_files(text)
    modules: list[tuple[str, str]] = [("transformers", "pip install transformers")]
    preset = PRESETS.get(model)
    if preset is not None and preset.kind == "random_gpt2":
        files += GPT2_TOKENIZER_FILES
    if preset is not None and preset.kind == "gguf":
        modules += [(preset.package, _LOCAL_EXTRAS), ("gguf", _LOCAL_EXTRAS)]
    if text.startswith("hf:"):
        modules.append(("datasets", "pip install datasets (and a network)"))
    return files, modules


def needs(name: str, profile: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Data files (relative to the data folder) and (module, how to get it) of one notebook."""
    p = get_profile(name, profile)
    files: list[str] = []
    modules: list[tuple[str, str]] = [("papermill", "pip install papermill")]
    if name == "00_train_vit_cifar10":
        files.append(CIFAR10_TAR)
        if p.mode == "evaluate":
            files += _model_files(p.model)
    elif name == "03_gpt2":
        f, m = _lm_needs(p.model, p.text)
        files, modules = files + f, modules + m
    elif name == "04_vit":
        if p.images == "cifar10":
            files.append(CIFAR10_TAR)
        files += _model_files(p.encoder)
    elif name == "05_architectures" and p.real_arm is not None:
        f, m = _lm_needs(p.real_arm.model, p.real_arm.text)
        files, modules = files + f, modules + m
    return files, modules


def _model_files(encoder: str) -> list[str]:
    """The checksummed files of a model folder shipped under ``data/models/`` (none for hub ids)."""
    return sorted(k for k in read_checksums(_data_dir()) if k.startswith(f"models/{encoder}/"))


def _free_mb(path: Path) -> float:
    """Free space on the file system that holds ``path`` (or its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free / 2**20


def check(names: list[str], profile: str) -> list[str]:
    """One message per missing need of the notebooks ``names`` under ``profile``; empty when all is there."""
    files: list[str] = []
    modules: list[tuple[str, str]] = []
    try:
        for name in names:
            f, m = needs(name, profile)
            files += [x for x in f if x not in files]
            modules += [x for x in m if x not in modules]
    except DataFileError as err:  # no data folder or no checksum list: nothing more to say per file
        return [str(err)]
    problems = missing_data(files)
    for module, how in modules:
        if importlib.util.find_spec(module) is None:
            problems.append(f"Python package providing '{module}' is not installed ({how})")
    need = _CACHE_MB[profile] if set(names) & _USES_CACHE else 0
    free = _free_mb(cache_root())
    if free < need:
        problems.append(f"{cache_root()}: {free:.0f} MB free, the {profile} profile needs about {need} MB "
                        f"for caches (free some space or set SOFTSAE_CACHE to a larger disk)")
    return problems
