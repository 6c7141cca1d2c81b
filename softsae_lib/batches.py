"""Every batching helper of the library, in one place (numpy and torch only, no other layer).

* :class:`BatchSource`: the trainer's batch of step s from a tensor, a (memory-mapped) array, an
  :class:`~softsae_lib.activations.cache.ActivationCache`, or an iterable of batches.
* :func:`sequential_batches`: rows in order, for evaluation.
* :class:`ShuffledBatches`: a shard-buffered shuffled stream over an activation cache, for data
  larger than memory (``ActivationCache.batches``).
* :func:`data_fingerprint`, :func:`sample_rows`: what identifies the data in a checkpoint.

For arrays the batch of step s is a pure function of (seed, s): each epoch is a fresh
permutation drawn from a generator seeded by (seed, epoch), and the trailing partial batch is
dropped. A resumed run therefore needs only the step index. The rows of a batch are read in
sorted order for every array type, so a tensor, an in-memory array and a memmap of the same data
give bit-identical batches. Under data-parallel training (``world_size`` W > 1) every rank draws
the same global batch and keeps its 1/W slice of it (rows sorted as above, then cut in W equal
parts), so W processes together see exactly the batch of one process. Iterables are replayed by
skipping the batches already consumed; a one-shot iterator cannot be replayed, so batches read
ahead with ``batch(step, keep=True)`` (the normalisation sample) are kept and handed out again
when training reaches their step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # the cache module imports this one (ActivationCache.batches)
    from softsae_lib.activations.cache import ActivationCache

# Rows hashed into a data fingerprint: enough to tell data sets apart, cheap on a memmap.
_SAMPLE_ROWS = 64


def data_fingerprint(sample: torch.Tensor | np.ndarray, shape: tuple[int, ...], dtype: str) -> dict:
    """Shape, dtype and SHA-256 of ``sample`` (some rows of the data, as float32)."""
    arr = np.ascontiguousarray(torch.as_tensor(sample).detach().cpu().float().numpy())
    return {"shape": [int(s) for s in shape], "dtype": str(dtype).removeprefix("torch."),
            "sample_sha256": hashlib.sha256(arr.tobytes()).hexdigest()}


def sample_rows(n: int) -> np.ndarray:
    """Up to 64 evenly spaced row indices of an n-row array (first and last included)."""
    return np.unique(np.linspace(0, n - 1, min(n, _SAMPLE_ROWS)).round().astype(np.int64))


def sequential_batches(data, batch_size: int) -> Iterator[torch.Tensor]:
    """Rows of ``data`` in order as float32-ready (≤ batch_size, d) tensors: slices of an (N, d) tensor,
    copies out of an array or memmap, or the batches of any other iterable as they come."""
    if isinstance(data, torch.Tensor):
        for i in range(0, data.shape[0], batch_size):
            yield data[i:i + batch_size]
    elif isinstance(data, np.ndarray):  # includes read-only memmaps: copy each batch out
        for i in range(0, data.shape[0], batch_size):
            yield torch.from_numpy(np.array(data[i:i + batch_size], dtype=np.float32))
    else:
        yield from data


class _RowReader:
    """Array view of a row-addressable store (``softsae_lib.activations.cache.ActivationCache``)."""

    ndim = 2

    def __init__(self, store) -> None:
        self.store, self.shape = store, (len(store), store.d)

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        return self.store.rows(index)


class BatchSource:
    """``batch(step) -> (B, d) float32 tensor`` over the data, for consecutive or resumed steps."""

    def __init__(self, data, batch_size: int, d_model: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.d_model = d_model
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self._array = None
        self._iterable: Iterable | None = None
        self._iter: Iterator | None = None
        self._next_step = 0
        self._kept: dict[int, torch.Tensor] = {}
        self._perm_cache: tuple[int, torch.Tensor | None] = (-1, None)
        if hasattr(data, "rows") and hasattr(data, "d") and hasattr(data, "__len__"):
            data = _RowReader(data)  # an ActivationCache: every rank reads only its rows, shard by shard
        if isinstance(data, (torch.Tensor, np.ndarray, _RowReader)):
            if data.ndim != 2 or data.shape[1] != d_model:
                raise ValueError(f"data must have shape (N, {d_model}), got {tuple(data.shape)}")
            if data.shape[0] < batch_size:
                raise ValueError(f"data has {data.shape[0]} rows, fewer than batch_size={batch_size}")
            self._array = data
            self.batch_size = batch_size
            self.batches_per_epoch = data.shape[0] // batch_size
        elif isinstance(data, (str, bytes, Mapping)):  # iterable, but of characters or keys
            raise TypeError(f"data must be a tensor, numpy array/memmap or iterable of batches, "
                            f"got a {type(data).__name__} (load the file or pick the array first)")
        elif isinstance(data, Iterable):
            self._iterable = data
            self.batch_size = None
        else:
            raise TypeError(f"data must be a tensor, numpy array/memmap or iterable of batches, "
                            f"got {type(data).__name__}")

    def _perm(self, epoch: int) -> torch.Tensor:
        if self._perm_cache[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm_cache = (epoch, torch.randperm(self._array.shape[0], generator=gen))
        return self._perm_cache[1]

    def _from_array(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.batches_per_epoch)
        # Sorted reads are far faster on a memmap; tensors use the same order so that the data's
        # container cannot change the (row-order dependent, in floating point) training result.
        rows = self._perm(epoch)[i * self.batch_size:(i + 1) * self.batch_size].sort().values
        if isinstance(self._array, torch.Tensor):  # index_select: a row copy, ~6x faster than x[rows]
            return torch.index_select(self._array, 0, rows.to(self._array.device))
        return torch.from_numpy(np.ascontiguousarray(self._array[rows.numpy()]))

    @property
    def one_shot(self) -> bool:
        """True for an iterable that is its own iterator (a generator): it cannot be re-read."""
        return self._iterable is not None and iter(self._iterable) is self._iterable

    def _from_iterable(self, step: int, keep: bool = False) -> torch.Tensor:
        if step in self._kept:
            return self._kept[step] if keep else self._kept.pop(step)
        if self._iter is None or step < self._next_step:
            if self._iter is not None and self.one_shot:
                raise ValueError(f"step {step}: cannot go back to an earlier batch of a one-shot "
                                 f"iterator (at batch {self._next_step}); pass a re-iterable")
            self._iter, self._next_step = iter(self._iterable), 0
        yielded = True  # whether the current pass has produced a batch (a fresh pass has not)
        while True:
            try:
                item = next(self._iter)
            except StopIteration:
                if not yielded or self._next_step == 0:  # an empty re-iterable would loop forever
                    raise ValueError(f"step {step}: the data iterable ({type(self._iterable).__name__}) "
                                     f"yielded no batches") from None
                if iter(self._iterable) is self._iterable:
                    raise ValueError(f"data iterator exhausted at step {step}: it yielded "
                                     f"{self._next_step} batches; pass a re-iterable (e.g. a list or "
                                     f"DataLoader) or fewer steps") from None
                self._iter = iter(self._iterable)  # next epoch
                yielded = False
                continue
            yielded = True
            self._next_step += 1
            if self._next_step > step:
                x = torch.as_tensor(item)
                if keep and self.one_shot:
                    self._kept[step] = x
                return x

    def fingerprint(self) -> dict:
        """What identifies the data for a resumed run: shape, dtype and a hash of a row sample
        (arrays: 64 evenly spaced rows; iterables: the first global batch)."""
        if self._array is not None:
            rows = sample_rows(self._array.shape[0])
            sample = (self._array[torch.from_numpy(rows).to(self._array.device)]
                      if isinstance(self._array, torch.Tensor) else self._array[rows])
            dtype = self._array.store.dtype if isinstance(self._array, _RowReader) else self._array.dtype
            return {"kind": "array", **data_fingerprint(sample, tuple(self._array.shape), str(dtype))}
        first = self._from_iterable(0, keep=True)
        return {"kind": "iterable", **data_fingerprint(first, tuple(first.shape), str(first.dtype))}

    def batch(self, step: int, keep: bool = False, full: bool = False) -> torch.Tensor:
        """The batch for ``step``: (B/W, d) float32, this rank's slice of the global (B, d) batch
        (``full=True``: the whole global batch). Raises ValueError naming the step on bad shape.

        ``keep=True`` marks a read-ahead (e.g. for normalisation): a one-shot iterator's batch is
        then kept until ``batch(step)`` is asked for again, instead of being lost.
        """
        x = self._from_array(step) if self._array is not None else self._from_iterable(step, keep)
        if x.ndim != 2 or x.shape[1] != self.d_model or x.shape[0] == 0:
            raise ValueError(f"step {step}: batch has shape {tuple(x.shape)}, expected (B>0, {self.d_model})")
        if self.world_size > 1 and not full:
            if x.shape[0] % self.world_size:
                raise ValueError(f"step {step}: global batch of {x.shape[0]} rows does not split evenly "
                                 f"over {self.world_size} ranks")
            n = x.shape[0] // self.world_size
            x = x[self.rank * n:(self.rank + 1) * n]
        return x.float() if x.dtype != torch.float32 else x


class ShuffledBatches:
    """Shuffled float32 batches from an :class:`ActivationCache`, for ``train_sae(model, data=...)``.

    Epoch e permutes the shard order with a generator seeded by (seed, e), fills a buffer with
    whole shards until it holds at least ``buffer_rows`` rows, permutes the buffer's rows and emits
    full batches; rows left over join the next buffer, the final partial batch of an epoch is
    dropped. ``epochs=None`` streams forever, so that the trainer (which replays an iterable from
    its start on resume) sees the same batches at the same steps.
    """

    def __init__(self, cache: ActivationCache, batch_size: int, seed: int = 0, buffer_rows: int = 262144,
                 epochs: int | None = None) -> None:
        if batch_size < 1 or batch_size > cache.n_rows:
            raise ValueError(f"batch_size must be in [1, {cache.n_rows}] (rows in the cache), "
                             f"got {batch_size}")
        self.cache, self.batch_size, self.seed = cache, batch_size, seed
        self.buffer_rows, self.epochs = max(buffer_rows, batch_size), epochs

    def __len__(self) -> int:
        if self.epochs is None:
            raise TypeError("an endless stream (epochs=None) has no length")
        return self.epochs * (self.cache.n_rows // self.batch_size)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows in the cache, d): code that reads ``data.shape[1]`` for the width accepts the stream."""
        return (self.cache.n_rows, self.cache.d)

    @property
    def batches_per_epoch(self) -> int:
        return self.cache.n_rows // self.batch_size

    def _epoch(self, epoch: int) -> Iterator[torch.Tensor]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.cache.shard_rows))
        carry = np.zeros((0, self.cache.d), dtype=np.float32)
        for pos, s in enumerate(order):
            parts = [carry, np.asarray(self.cache.shard(int(s)), dtype=np.float32)]
            carry = np.concatenate(parts)
            if carry.shape[0] < self.buffer_rows and pos < len(order) - 1:
                continue
            carry = carry[rng.permutation(carry.shape[0])]
            n_full = carry.shape[0] // self.batch_size
            for b in range(n_full):
                yield torch.from_numpy(carry[b * self.batch_size:(b + 1) * self.batch_size])
            carry = carry[n_full * self.batch_size:]

    def __iter__(self) -> Iterator[torch.Tensor]:
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            yield from self._epoch(epoch)
            epoch += 1
