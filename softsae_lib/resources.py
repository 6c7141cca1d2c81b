"""Where the project's own files are: the checkout, its ``data/`` folder and its notebooks.

Every path to something shipped with the repository is resolved here and nowhere else, so that a
clone works with nothing beside it and a non-editable install fails with one clear line instead of a
missing-file error deep in a notebook.

* ``$SOFTSAE_DATA`` (if set) is the data folder; otherwise ``<checkout>/data``.
* Every file of the data folder that the code reads is listed, with its SHA-256, in
  ``data/SHA256SUMS`` (the ``sha256sum`` format, so ``cd data && sha256sum -c SHA256SUMS`` checks it
  by hand too); :func:`data_file` verifies a file against it once per process and names the file on
  a mismatch.
"""

from __future__ import annotations

import lzma
import os
from pathlib import Path

from softsae_lib.atomic import sha256_file

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKSUMS = "SHA256SUMS"


class DataFileError(FileNotFoundError):
    """A data file the project needs is missing, unlisted or does not match its checksum."""


def repo_root() -> Path | None:
    """The checkout this package was imported from (it holds ``notebooks/``), or None for an install."""
    root = PACKAGE_DIR.parent
    return root if (root / "notebooks").is_dir() and (root / "softsae_lib").is_dir() else None


def notebooks_dir() -> Path:
    """The checkout's ``notebooks/`` folder; reproduction runs from a clone, never from an install."""
    root = repo_root()
    if root is None:
        raise FileNotFoundError(
            f"the notebooks are not installed with the package ({PACKAGE_DIR}): reproduction runs from a "
            f"clone of the repository (git clone …; cd softsae; make reproduce)")
    return root / "notebooks"


def data_dir() -> Path:
    """``$SOFTSAE_DATA`` or the checkout's ``data/`` folder."""
    env = os.environ.get("SOFTSAE_DATA")
    if env:
        return Path(env)
    root = repo_root()
    if root is None:
        raise DataFileError(f"no data folder: the package at {PACKAGE_DIR} is not inside a clone of the "
                            f"repository; set SOFTSAE_DATA to a clone's data/ folder")
    return root / "data"


def models_dir() -> Path:
    """``<data>/models``: the project's own trained encoders (a path that may not exist in an install)."""
    try:
        return data_dir() / "models"
    except DataFileError:
        return PACKAGE_DIR / "data-not-installed" / "models"


def read_checksums(folder: Path) -> dict[str, str]:
    """relative path -> SHA-256 from ``folder/SHA256SUMS``; errors name the file and line."""
    path = folder / CHECKSUMS
    if not path.is_file():
        raise DataFileError(f"{path}: checksum list missing (the data folder is incomplete; see "
                            f"data/README.md)")
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise DataFileError(f"{path}:{n}: expected '<sha256>  <path>', got {line!r}")
        out[name.strip()] = digest
    return out


_VERIFIED: dict[tuple[str, int, int], str] = {}


def data_file(relative: str, verify: bool = True) -> Path:
    """The data file ``relative`` (e.g. ``"images/cifar10-jpeg.tar.gz"``), checked against SHA256SUMS.

    Raises :class:`DataFileError` naming the file when it is missing, not listed, or altered. The
    check runs once per process and file version (path, size, mtime).
    """
    folder = data_dir()
    path = folder / relative
    if not path.is_file():
        raise DataFileError(f"{path}: data file missing (it ships with the repository: restore it with "
                            f"`git checkout -- data/{relative}`, or point SOFTSAE_DATA at a complete copy)")
    if verify:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _VERIFIED:
            expected = read_checksums(folder).get(relative)
            if expected is None:
                raise DataFileError(f"{path}: not listed in {folder / CHECKSUMS}")
            actual = sha256_file(path)
            if actual != expected:
                raise DataFileError(f"{path}: SHA-256 {actual[:16]}… does not match {expected[:16]}… in "
                                    f"{folder / CHECKSUMS} (the file is damaged or was replaced)")
            _VERIFIED[key] = actual
    return path


def read_data_bytes(relative: str) -> bytes:
    """Contents of a verified data file, decompressed when it is stored as ``.xz``."""
    path = data_file(relative)
    data = path.read_bytes()
    return lzma.decompress(data) if path.suffix == ".xz" else data


def missing_data(relatives: list[str]) -> list[str]:
    """One message per file of ``relatives`` that is missing or damaged (empty: all present)."""
    problems = []
    for rel in relatives:
        try:
            data_file(rel)
        except DataFileError as err:
            problems.append(str(err))
    return problems


# Data each part of the project reads (paths relative to the data folder).
WIKITEXT_FILES = ("text/wikitext-2/valid.txt.xz", "text/wikitext-2/test.txt.xz")
GPT2_TOKENIZER_FILES = ("tokenizers/gpt2/vocab.json.xz", "tokenizers/gpt2/merges.txt.xz")
CIFAR10_TAR = "images/cifar10-jpeg.tar.gz"


def gutenberg_files() -> list[str]:
    """The Gutenberg books listed in SHA256SUMS (sorted, as the corpus orders them)."""
    return sorted(k for k in read_checksums(data_dir()) if k.startswith("text/gutenberg/")
                  and k.endswith(".txt.xz"))
