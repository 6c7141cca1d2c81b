"""The activation cache: round trip, resume after an interruption, corruption and mismatch errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from softsae_lib.activations.cache import (
    MANIFEST,
    ActivationCache,
    CacheCorruptError,
    CacheError,
    CacheMismatchError,
    CacheWriter,
    is_complete,
)
from softsae_lib.saes import make_sae
from softsae_lib.training import TrainConfig, train_sae

pytestmark = pytest.mark.usefixtures("single_thread")

META = {"model": "toy", "layer": 3, "dataset": "unit-test"}


def _chunks(n_chunks: int, rows: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for c in range(n_chunks):
        x = rng.normal(size=(rows, d)).astype(np.float32)
        ids = np.arange(c * rows, (c + 1) * rows)
        yield c, x, ids


def _write(root, n_chunks=5, rows=30, d=8, shard_rows=50, stop_after=None, dtype="float32"):
    writer = CacheWriter(root, d, META, columns=("token_id", "doc_id"), dtype=dtype, shard_rows=shard_rows)
    start = writer.progress.get("chunks_done", 0)
    for c, x, ids in _chunks(n_chunks, rows, d):
        if c < start:
            continue
        if stop_after is not None and c == stop_after:
            return writer  # simulated crash: no finish(), buffered rows lost
        writer.append(x, progress={"chunks_done": c + 1}, token_id=ids, doc_id=np.full(rows, c))
    writer.finish()
    return writer


def test_round_trip_shards_columns_and_memmap(tmp_path):
    _write(tmp_path, dtype="float32")
    cache = ActivationCache(tmp_path)
    expected = np.concatenate([x for _, x, _ in _chunks(5, 30, 8)])
    assert len(cache) == 150 and cache.meta == META and cache.columns == ["token_id", "doc_id"]
    # A shard is cut at the first append boundary past shard_rows: 60 + 60 + 30.
    assert cache.shard_rows == [60, 60, 30]
    assert isinstance(cache.shard(0), np.memmap)
    np.testing.assert_array_equal(cache.vectors(), expected)
    np.testing.assert_array_equal(cache.column("token_id"), np.arange(150))
    np.testing.assert_array_equal(cache.column("doc_id"), np.repeat(np.arange(5), 30))
    idx = np.array([149, 0, 61, 59, 60])
    np.testing.assert_array_equal(cache.rows(idx), expected[idx])
    assert is_complete(tmp_path, META) and not is_complete(tmp_path, {**META, "layer": 4})


def test_float16_storage(tmp_path):
    _write(tmp_path, dtype="float16")
    cache = ActivationCache(tmp_path)
    expected = np.concatenate([x for _, x, _ in _chunks(5, 30, 8)])
    assert cache.shard(0).dtype == np.float16
    np.testing.assert_allclose(cache.vectors(), expected, rtol=1e-3, atol=1e-3)


def test_resume_after_interruption_gives_the_uninterrupted_cache(tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    _write(whole)
    w = _write(resumed, stop_after=3)  # chunks 0-2 appended; chunk 2's 30 rows were still buffered
    assert w.rows_written == 60 and w.progress == {"chunks_done": 2}
    with pytest.raises(CacheError, match="incomplete"):
        ActivationCache(resumed)
    _write(resumed)  # reopens, continues at chunk 2
    a, b = ActivationCache(whole), ActivationCache(resumed)
    np.testing.assert_array_equal(a.vectors(), b.vectors())
    np.testing.assert_array_equal(a.column("token_id"), b.column("token_id"))


def test_corrupt_shard_is_named(tmp_path):
    _write(tmp_path)
    target = tmp_path / "shard-00001.x.npy"
    raw = bytearray(target.read_bytes())
    raw[-5] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(CacheCorruptError, match="shard-00001.x.npy"):
        ActivationCache(tmp_path)
    (tmp_path / "shard-00002.doc_id.npy").unlink()
    with pytest.raises(CacheCorruptError, match="shard-00001.x.npy"):
        ActivationCache(tmp_path)
    target.unlink()
    with pytest.raises(CacheCorruptError, match="shard-00001.x.npy.*missing"):
        ActivationCache(tmp_path)


def test_reopen_with_other_meta_or_width_raises(tmp_path):
    _write(tmp_path, stop_after=2)
    with pytest.raises(CacheMismatchError, match="layer"):
        CacheWriter(tmp_path, 8, {**META, "layer": 4}, columns=("token_id", "doc_id"))
    with pytest.raises(CacheMismatchError, match="d: cache has 8"):
        CacheWriter(tmp_path, 9, META, columns=("token_id", "doc_id"))
    with pytest.raises(CacheMismatchError, match="columns"):
        CacheWriter(tmp_path, 8, META, columns=("token_id",))


def test_bad_appends_are_rejected(tmp_path):
    w = CacheWriter(tmp_path, 4, META, columns=("token_id",))
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        w.append(np.zeros((3, 5)), token_id=np.arange(3))
    with pytest.raises(ValueError, match="columns must be exactly"):
        w.append(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="'token_id' has shape"):
        w.append(np.zeros((3, 4)), token_id=np.arange(2))
    bad = np.zeros((3, 4))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="row 1"):
        w.append(bad, token_id=np.arange(3))
    w.finish()
    with pytest.raises(CacheError, match="already complete"):
        w.append(np.zeros((1, 4)), token_id=np.arange(1))
    assert json.loads((tmp_path / MANIFEST).read_text())["complete"] is True


def test_shuffled_batches_cover_rows_and_are_deterministic(tmp_path):
    _write(tmp_path)
    cache = ActivationCache(tmp_path)
    first = list(cache.batches(16, seed=1, buffer_rows=64, epochs=1))
    again = list(cache.batches(16, seed=1, buffer_rows=64, epochs=1))
    other = list(cache.batches(16, seed=2, buffer_rows=64, epochs=1))
    assert len(first) == 150 // 16 and all(b.shape == (16, 8) and b.dtype == torch.float32 for b in first)
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.equal(first[0], other[0])
    seen = torch.cat(first).numpy()
    full = cache.vectors()
    # Every emitted row is a distinct cache row (no duplicates within an epoch).
    matches = [np.nonzero((full == r).all(axis=1))[0] for r in seen]
    assert all(len(m) == 1 for m in matches)
    assert len({int(m[0]) for m in matches}) == len(seen)


def test_batches_train_an_sae(tmp_path):
    _write(tmp_path, n_chunks=10, rows=40, d=8)
    cache = ActivationCache(tmp_path)
    model = make_sae("topk", d_model=8, dict_size=16, k=2, seed=0)
    result = train_sae(model, cache.batches(32, seed=0, buffer_rows=128),
                       TrainConfig(steps=30, warmup_steps=1, normalization_batches=2, progress=False))
    assert result.steps_run == 30 and np.isfinite(result.history["loss"]).all()
