"""Batches for the trainer from a tensor, a (memory-mapped) array, or an iterable of batches.

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

from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import torch


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
        if isinstance(self._array, torch.Tensor):
            return self._array[rows.to(self._array.device)]
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
        from softsae_lib.training.checkpoint import data_fingerprint, sample_rows

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
