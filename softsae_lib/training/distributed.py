"""Data-parallel training across processes with ``torch.distributed`` (NCCL on GPUs, Gloo on CPUs).

Launch the ordinary training entry point under ``torchrun``; :func:`init_from_env` reads the
variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and :func:`train_sae`
does the rest:

* the global batch of a step (``TrainConfig.batch_size``) is drawn exactly as in a single process and
  rank r reads only its rows r·B/W … (r+1)·B/W − 1 (its shard of every batch, so a W-process run
  sees the same data as one process with the same global batch);
* gradients are averaged by :class:`~torch.nn.parallel.DistributedDataParallel`; losses that are
  per-sample means then give exactly the single-process gradient. Batch-level statistics inside a
  loss (SoftSAE's mean k̂ in its budget loss) use :func:`global_mean`, whose backward is also
  distributed, so they stay exact too. Selections over the whole batch (BatchTopK's top B·k,
  Feature/Mutual Choice) act on each rank's shard, as in other SAE libraries;
* dead-latent counters, the logged losses and every buffer an architecture lists in
  ``SAE.synced_buffers`` (e.g. BatchTopK's inference threshold) are reduced across ranks each step;
* only rank 0 writes checkpoints (atomically) and results; on resume rank 0 reads the checkpoint and
  broadcasts it, so other machines need no shared file system.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from softsae_lib.collectives import global_mean as global_mean  # re-exported (lives below saes)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    """This process's rank (0 … world_size − 1)."""
    world_size: int
    """Number of processes."""
    local_rank: int
    """Rank on this machine (selects the GPU)."""


def init_from_env(backend: str | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for a single process).

    Args:
        backend: "nccl" or "gloo"; None picks NCCL when CUDA is available, else Gloo.
    """
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return info()


def info() -> DistInfo:
    """Rank and world size of the current process group (rank 0 of 1 without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo(0, 1, 0)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def active() -> bool:
    """True inside a process group of more than one process."""
    return info().world_size > 1


def reduce_(t: Tensor, op: str = "mean") -> Tensor:
    """In-place all-reduce of ``t`` ("mean", "sum" or "max") across ranks; identity for one process."""
    if active():
        if op == "mean":
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(info().world_size)
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t


def broadcast_object(obj):
    """``obj`` from rank 0 on every rank (pickled; for checkpoints)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()
