"""Run independent training jobs in worker processes (one CPU thread each).

Small SAEs (d = 64, F = 512) use one core poorly with several intra-op threads; W single-threaded
processes, one job each, finish ≈ W× sooner on W cores. Every job is a picklable callable (a
module-level function, or a :func:`functools.partial` of one) whose result depends only on its
arguments (seeds included), so results are identical whatever ``workers`` is.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Hashable
from concurrent.futures import ProcessPoolExecutor


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def run_jobs(jobs: dict[Hashable, Callable[[], object]], workers: int = 1) -> dict:
    """``{key: job()}`` for every job, in ``workers`` processes (1: in this process, in order).

    Processes are started with "spawn" (no fork of a kernel holding threads or open files); a job that
    raises re-raises here with its key named.
    """
    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    if workers == 1 or len(jobs) <= 1:
        return {key: job() for key, job in jobs.items()}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx,
                             initializer=_single_thread) as pool:
        futures = {key: pool.submit(job) for key, job in jobs.items()}
        out = {}
        for key, fut in futures.items():
            try:
                out[key] = fut.result()
            except Exception as err:
                raise RuntimeError(f"job {key!r} failed: {type(err).__name__}: {err}") from err
    return out
