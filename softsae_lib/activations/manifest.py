"""Structure checks of an activation cache's ``manifest.json`` (see :mod:`softsae_lib.activations.cache`).

The manifest is read before any shard, and whoever writes it also writes the checksums, so the
checksums cannot vouch for it: every field is checked here, and a shard file must be a plain
name that resolves inside the cache folder (no ``../x.npy``, no absolute path, no symlink out).
"""

from __future__ import annotations

import re
from pathlib import Path

_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.npy")
# key -> (accepted types, description); every key is required.
_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "d": ((int,), "an int ≥ 1"),
    "dtype": ((str,), "a string"),
    "columns": ((list,), "a list of column names"),
    "meta": ((dict,), "an object"),
    "shards": ((list,), "a list of shard records"),
    "n_rows": ((int,), "an int ≥ 0"),
    "progress": ((dict,), "an object"),
    "complete": ((bool,), "true or false"),
}


def _is(value, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def inside(root: Path, name: object) -> bool:
    """True when ``name`` is a plain ``.npy`` file name that resolves to a file directly in ``root``."""
    if not isinstance(name, str) or not _FILE.fullmatch(name):
        return False
    return (root / name).resolve().parent == root.resolve()


def manifest_problem(root: Path, doc: object, dtypes: tuple[str, ...], vector_key: str) -> str | None:
    """What is wrong with the parsed manifest ``doc`` of the cache in ``root``, or None."""
    if not isinstance(doc, dict):
        return f"expected a JSON object, got a JSON {type(doc).__name__}"
    for key, (types, want) in _FIELDS.items():
        if key not in doc:
            return f"lacks the required field {key!r}"
        if not _is(doc[key], types):
            return f"field {key!r} must be {want}, got {doc[key]!r:.80}"
    if doc["d"] < 1 or doc["n_rows"] < 0:
        return f"field 'd' must be ≥ 1 and 'n_rows' ≥ 0, got {doc['d']}, {doc['n_rows']}"
    if doc["dtype"] not in dtypes:
        return f"field 'dtype' is {doc['dtype']!r}; supported: {list(dtypes)}"
    if not all(isinstance(c, str) and c.isidentifier() and c != vector_key for c in doc["columns"]):
        return f"field 'columns' must hold identifiers other than {vector_key!r}, got {doc['columns']}"
    keys = {vector_key, *doc["columns"]}
    total = 0
    for i, shard in enumerate(doc["shards"]):
        where = f"shards[{i}]"
        if not isinstance(shard, dict) or not _is(shard.get("rows"), (int,)) or shard["rows"] < 0:
            return f"{where} must be an object with an int 'rows' ≥ 0"
        files = shard.get("files")
        if not isinstance(files, dict) or set(files) != keys:
            got = sorted(files) if isinstance(files, dict) else files
            return f"{where}.files must have exactly the keys {sorted(keys)}, got {got}"
        for key, entry in files.items():
            if not isinstance(entry, dict):
                return f"{where}.files.{key} must be an object with 'file' and 'sha256'"
            if not inside(root, entry.get("file")):
                return (f"{where}.files.{key}.file {entry.get('file')!r} is not a plain .npy file name "
                        f"inside the cache folder")
            if not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"]):
                return f"{where}.files.{key}.sha256 must be 64 lowercase hex digits"
        total += shard["rows"]
    if total != doc["n_rows"]:
        return f"n_rows is {doc['n_rows']} but the shards hold {total} rows"
    return None
