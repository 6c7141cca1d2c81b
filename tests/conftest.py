"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: intra-op and BLAS threads only add synchronisation cost on shared cores.

    Use with ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(n)
