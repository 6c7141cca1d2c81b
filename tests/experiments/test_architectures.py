"""softsae_lib.experiments.architectures: notebook 05's matched comparison and frontier give the same
results whether the baselines train in this process or in worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from softsae_lib.experiments.architectures import compare_architectures, frontier
from softsae_lib.profiles import get_profile

pytestmark = pytest.mark.usefixtures("single_thread")


def test_workers_change_nothing_but_the_wall_time():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1400, 5, generator=g).relu() @ torch.randn(5, 16, generator=g)
    truth = {"lid": np.arange(400) % 7, "cluster": np.arange(400) % 10}
    archs = ("soft", "topk", "batch_topk")
    out = {}
    for workers in (1, 2):
        p = get_profile("05_architectures", "smoke").replace(dict_size=32, k=4, steps=40, batch_size=100,
                                                             n_boot=20, workers=workers)
        arm = compare_architectures(x[:1000], x[1000:], p, truth, lid_col="lid", clusters="cluster",
                                    archs=archs, log=lambda *_: None)
        front = frontier(arm.models, x[:1000], x[1000:], p, (1.0, 2.0), log=lambda *_: None)
        out[workers] = (arm, front)
    (a1, f1), (a2, f2) = out[1], out[2]
    assert list(a1.table["model"]) == list(archs)
    cols = ["fvu", "dead_fraction", "l0_mean", "spearman_lid"]
    assert np.array_equal(a1.table[cols].to_numpy(), a2.table[cols].to_numpy(), equal_nan=True)
    assert torch.equal(a1.models["batch_topk"].model.threshold, a2.models["batch_topk"].model.threshold)
    assert f1.equals(f2) and len(f1) == 2 * len(archs)
    assert (f1[f1["scale"] == 2.0]["budget"].to_numpy() > f1[f1["scale"] == 1.0]["budget"].to_numpy()).all()
