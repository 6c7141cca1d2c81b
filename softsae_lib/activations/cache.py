"""On-disk cache of activation vectors: checksummed ``.npy`` shards plus a JSON manifest.

The format is generic over what produced the vectors (language-model residual streams, image
embeddings, ...): each row is one float vector of width ``d`` plus any number of named int64
columns (``token_id``, ``doc_id``, ``position`` for a language model; ``image_id``, ``label`` for
images). Layout of a cache folder::

    manifest.json
    shard-00000.x.npy            (n_0, d) float32 or float16 vectors
    shard-00000.<column>.npy     (n_0,) int64, one file per named column
    shard-00001.x.npy
    ...

``manifest.json``::

    {"format": "softsae_lib.activation_cache", "format_version": 1,
     "d": 576, "dtype": "float32", "columns": ["token_id", "doc_id", "position"],
     "meta": {...free-form: model, revision or file hash, layer, dataset, ...},
     "shards": [{"name": "shard-00000", "rows": 65536,
                 "files": {"x": {"file": "shard-00000.x.npy", "sha256": "..."},
                           "token_id": {"file": ..., "sha256": ...}, ...}}, ...],
     "n_rows": 131072, "progress": {...free-form, as of the last shard...}, "complete": false}

Writing (:class:`CacheWriter`): rows are buffered in memory and the *whole* buffer becomes one
shard once it holds ``shard_rows`` rows or more, so a shard boundary always falls between two
``append`` calls. Each file is written atomically (temporary file, fsync, rename), then the
manifest is rewritten atomically with the shard's SHA-256 and the caller's ``progress`` dict as
of that append. After a crash the manifest therefore describes exactly the rows on disk and how
far the producer had got; reopening the folder resumes from there (files of a shard that never
reached the manifest are overwritten). Reopening with different ``d``, dtype, columns or ``meta``
raises :class:`CacheMismatchError` naming the differing fields.

Reading (:class:`ActivationCache`): every file's SHA-256 is checked on open (``verify=True``), and
a mismatch raises :class:`CacheCorruptError` naming the file. Shards are memory-mapped
(``np.load(mmap_mode='r')``). :meth:`ActivationCache.batches` yields shuffled float32 batches for
``train_sae`` without loading the whole cache: per epoch the shard order is permuted, shards are
read into a shuffle buffer of ``buffer_rows`` rows, and each buffer is permuted row-wise; the
stream is a pure function of ``(seed, epoch)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from softsae_lib.activations.manifest import inside, manifest_problem
from softsae_lib.atomic import atomic_path, atomic_write_text, sha256_file
from softsae_lib.batches import ShuffledBatches

FORMAT = "softsae_lib.activation_cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VECTOR_KEY = "x"
DTYPES = ("float32", "float16")


class CacheError(ValueError):
    """Base class of activation-cache errors."""


class CacheCorruptError(CacheError):
    """A shard file is missing, truncated or fails its checksum (the message names the file)."""


class CacheMismatchError(CacheError):
    """An existing cache was written with a different width, dtype, columns or meta."""


def _jsonable(value) -> object:
    """``value`` as it reads back from JSON (tuples become lists), for comparing metas."""
    return json.loads(json.dumps(value, sort_keys=True))


def read_manifest(root: str | Path) -> dict | None:
    """The manifest of the cache at ``root``, or None when there is none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CacheCorruptError(f"{path}: not valid UTF-8 JSON ({err})") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        what = doc.get("format") if isinstance(doc, dict) else f"a JSON {type(doc).__name__}"
        raise CacheError(f"{path}: not an activation cache (format {what!r})")
    version = doc.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CacheError(f"{path}: format version {version!r} is not supported (this code reads "
                         f"≤ {FORMAT_VERSION})")
    problem = manifest_problem(path.parent, doc, DTYPES, VECTOR_KEY)
    if problem:
        raise CacheCorruptError(f"{path}: {problem}")
    return doc


def is_complete(root: str | Path, meta: Mapping | None = None) -> bool:
    """True if ``root`` holds a finished cache (with this ``meta``, when given)."""
    doc = read_manifest(root)
    if doc is None or not doc.get("complete"):
        return False
    return meta is None or doc["meta"] == _jsonable(dict(meta))


class CacheWriter:
    """Append vectors and per-row int64 columns; cuts, checksums and records shards; resumes.

    Args:
        root: the cache folder (created).
        d: vector width.
        meta: free-form JSON-serialisable description of the producer (model, layer, dataset...).
        columns: names of the int64 per-row columns every ``append`` must supply.
        dtype: storage dtype of the vectors, "float32" or "float16".
        shard_rows: a shard is cut once this many rows are buffered.

    Use as a context manager or call :meth:`finish` to flush and mark the cache complete.
    """

    def __init__(self, root: str | Path, d: int, meta: Mapping, columns: tuple[str, ...] | list[str] = (),
                 dtype: str = "float32", shard_rows: int = 65536) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if d < 1 or shard_rows < 1:
            raise ValueError(f"d and shard_rows must be ≥ 1, got {d}, {shard_rows}")
        bad = [c for c in columns if c == VECTOR_KEY or not c.isidentifier()]
        if bad:
            raise ValueError(f"invalid column name(s) {bad}: use identifiers other than {VECTOR_KEY!r}")
        self.root = Path(root)
        self.shard_rows = shard_rows
        self._buffer: list[dict[str, np.ndarray]] = []
        self._buffered = 0
        self._pending_progress: dict | None = None
        wanted = {"d": int(d), "dtype": dtype, "columns": list(columns), "meta": _jsonable(dict(meta))}
        existing = read_manifest(self.root)
        if existing is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self.manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **wanted,
                             "shards": [], "n_rows": 0, "progress": {}, "complete": False}
            self._write_manifest()
        else:
            diff = [k for k in wanted if existing.get(k) != wanted[k]]
            if diff:
                detail = "; ".join(f"{k}: cache has {existing.get(k)!r}, asked for {wanted[k]!r}"
                                   for k in diff)
                raise CacheMismatchError(f"{self.root / MANIFEST}: existing cache differs ({detail}); "
                                         f"use another folder or delete this one")
            self.manifest = existing

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    @property
    def rows_written(self) -> int:
        """Rows in shards recorded in the manifest (buffered rows not included)."""
        return int(self.manifest["n_rows"])

    @property
    def progress(self) -> dict:
        """The producer's progress as of the last recorded shard (what a resumed run starts from)."""
        return dict(self.manifest["progress"])

    def append(self, x: np.ndarray | torch.Tensor, progress: Mapping | None = None,
               **columns: np.ndarray | torch.Tensor) -> None:
        """Buffer rows ``x: (n, d)`` with ``columns[name]: (n,)``; ``progress`` describes the producer
        *after* these rows and is stored with the shard that contains them."""
        if self.complete:
            raise CacheError(f"{self.root}: cache is already complete; nothing more can be appended")
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        d = self.manifest["d"]
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"append: x must have shape (n, {d}), got {x.shape}")
        names = self.manifest["columns"]
        if sorted(columns) != sorted(names):
            raise ValueError(f"append: columns must be exactly {names}, got {sorted(columns)}")
        if not np.isfinite(x).all():
            row = int(np.nonzero(~np.isfinite(x).all(axis=1))[0][0])
            raise ValueError(f"append: x has NaN/Inf (first in row {row} of this batch)")
        rows = {VECTOR_KEY: x.astype(self.manifest["dtype"], copy=False)}
        for name in names:
            col = columns[name]
            col = col.detach().cpu().numpy() if isinstance(col, torch.Tensor) else np.asarray(col)
            if col.shape != (x.shape[0],):
                raise ValueError(f"append: column {name!r} has shape {col.shape}, expected ({x.shape[0]},)")
            if not (np.issubdtype(col.dtype, np.integer) or col.dtype == np.bool_):
                # astype would silently truncate 1.7 to 1: only whole-valued floats are accepted
                ok = (np.isfinite(col) & (col == np.round(col)) if np.issubdtype(col.dtype, np.floating)
                      else np.zeros(col.shape, dtype=bool))
                if not ok.all():
                    bad = int(np.nonzero(~ok)[0][0])
                    raise ValueError(f"append: column {name!r} must hold integers; row {bad} of this "
                                     f"batch is {col[bad]!r} ({col.dtype})")
            rows[name] = col.astype(np.int64, copy=False)
        if x.shape[0]:
            self._buffer.append(rows)
            self._buffered += x.shape[0]
        if progress is not None:
            self._pending_progress = _jsonable(dict(progress))
        if self._buffered >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one shard (if any) and record it with the latest progress."""
        if self._buffered == 0:
            if self._pending_progress is not None:
                self.manifest["progress"] = self._pending_progress
                self._pending_progress = None
                self._write_manifest()
            return
        index = len(self.manifest["shards"])
        name = f"shard-{index:05d}"
        files = {}
        for key in (VECTOR_KEY, *self.manifest["columns"]):
            array = np.concatenate([b[key] for b in self._buffer])
            file = f"{name}.{key}.npy"
            with atomic_path(self.root / file) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, array, allow_pickle=False)
            files[key] = {"file": file, "sha256": sha256_file(self.root / file)}
        self.manifest["shards"].append({"name": name, "rows": self._buffered, "files": files})
        self.manifest["n_rows"] += self._buffered
        if self._pending_progress is not None:
            self.manifest["progress"] = self._pending_progress
            self._pending_progress = None
        self._buffer, self._buffered = [], 0
        self._write_manifest()

    def finish(self, progress: Mapping | None = None) -> None:
        """Flush, merge ``progress`` into the recorded progress, and mark the cache complete
        (readers by default accept only complete caches)."""
        self.flush()
        if progress:
            self.manifest["progress"].update(_jsonable(dict(progress)))
        self.manifest["complete"] = True
        self._write_manifest()

    def _write_manifest(self) -> None:
        atomic_write_text(self.root / MANIFEST, json.dumps(self.manifest, indent=1))

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an error the buffered rows are dropped: the manifest's progress then still matches
        # the rows on disk, and a resumed run redoes only the unrecorded part.
        if exc_type is None and not self.complete:
            self.finish()


class ActivationCache:
    """Read a cache: verified, memory-mapped shards; columns; shuffled batches for training.

    Args:
        root: the cache folder.
        verify: check every file's SHA-256 (raises :class:`CacheCorruptError` naming the file).
        require_complete: refuse a cache whose writer has not finished.
    """

    def __init__(self, root: str | Path, verify: bool = True, require_complete: bool = True) -> None:
        self.root = Path(root)
        doc = read_manifest(self.root)
        if doc is None:
            raise FileNotFoundError(f"{self.root / MANIFEST}: no activation cache here")
        if require_complete and not doc.get("complete"):
            raise CacheError(f"{self.root}: cache is incomplete ({doc['n_rows']} rows so far); "
                             f"resume the capture or pass require_complete=False")
        self.manifest = doc
        self.d: int = doc["d"]
        self.dtype: str = doc["dtype"]
        self.meta: dict = doc["meta"]
        self.columns: list[str] = doc["columns"]
        self.n_rows: int = doc["n_rows"]
        self.shard_rows = [s["rows"] for s in doc["shards"]]
        self._maps: dict[tuple[int, str], np.ndarray] = {}
        if verify:
            self.verify()

    def __len__(self) -> int:
        return self.n_rows

    def verify(self) -> None:
        """Check presence and SHA-256 of every shard file; raises :class:`CacheCorruptError`."""
        for shard in self.manifest["shards"]:
            for entry in shard["files"].values():
                path = self.root / entry["file"]
                if not path.is_file():
                    raise CacheCorruptError(f"{path}: shard file missing (listed in {MANIFEST})")
                if sha256_file(path) != entry["sha256"]:
                    raise CacheCorruptError(f"{path}: checksum mismatch, the shard is corrupt; "
                                            f"delete the cache folder and capture again")

    def shard(self, i: int, key: str = VECTOR_KEY) -> np.ndarray:
        """Memory-mapped array of shard ``i``: vectors (n_i, d) for key 'x', else the (n_i,) column."""
        if (i, key) not in self._maps:
            entry = self.manifest["shards"][i]["files"].get(key)
            if entry is None:
                raise KeyError(f"no column {key!r}; the cache has {[VECTOR_KEY, *self.columns]}")
            path = self.root / entry["file"]
            if not inside(self.root, entry["file"]):  # the manifest was checked; this is the read site
                raise CacheCorruptError(f"{path}: shard file is not inside {self.root}")
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise CacheCorruptError(f"{path}: cannot be read as .npy ({err})") from err
            expected = (self.shard_rows[i], self.d) if key == VECTOR_KEY else (self.shard_rows[i],)
            if array.shape != expected:
                raise CacheCorruptError(f"{path}: shape {array.shape}, manifest says {expected}")
            want = self.dtype if key == VECTOR_KEY else "int64"
            if array.dtype != np.dtype(want):
                raise CacheCorruptError(f"{path}: dtype {array.dtype}, manifest says {want}")
            self._maps[(i, key)] = array
        return self._maps[(i, key)]

    def column(self, name: str) -> np.ndarray:
        """The int64 column ``name`` over all rows, in storage order (in memory), shape (N,)."""
        if not self.manifest["shards"]:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.asarray(self.shard(i, name)) for i in range(len(self.shard_rows))])

    def vectors(self, dtype: str | None = "float32") -> np.ndarray:
        """All vectors, shape (N, d): the memmap itself for a single shard stored in ``dtype``,
        otherwise a concatenated in-memory copy (mind the size: N·d·4 bytes for float32)."""
        n = len(self.shard_rows)
        if n == 1 and (dtype is None or dtype == self.dtype):
            return self.shard(0)
        if n == 0:
            return np.zeros((0, self.d), dtype=dtype or self.dtype)
        return np.concatenate([np.asarray(self.shard(i), dtype=dtype) for i in range(n)])

    def rows(self, index: np.ndarray, dtype: str = "float32") -> np.ndarray:
        """Vectors at global row indices ``index: (m,)`` → (m, d), in the order given."""
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.n_rows):
            raise IndexError(f"row index out of range [0, {self.n_rows})")
        starts = np.concatenate([[0], np.cumsum(self.shard_rows)])
        out = np.empty((index.size, self.d), dtype=dtype)
        which = np.searchsorted(starts, index, side="right") - 1
        for s in np.unique(which):
            sel = np.nonzero(which == s)[0]
            local = index[sel] - starts[s]
            order = np.argsort(local, kind="stable")  # sorted reads are fast on a memmap
            out[sel[order]] = self.shard(int(s))[local[order]]
        return out

    def batches(self, batch_size: int, seed: int = 0, buffer_rows: int = 262144,
                epochs: int | None = None) -> ShuffledBatches:
        """Re-iterable stream of shuffled (batch_size, d) float32 tensors (see :class:`ShuffledBatches`)."""
        return ShuffledBatches(self, batch_size, seed, buffer_rows, epochs)
