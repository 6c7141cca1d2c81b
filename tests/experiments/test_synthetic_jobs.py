"""softsae_lib.experiments.synthetic: notebook 02's ablation and k-anneal jobs are built as documented."""

from __future__ import annotations

import pytest
import torch

from softsae_lib.experiments.synthetic import (
    ABLATIONS,
    _ablation_settings,
    ablation_jobs,
    baseline_anneal_jobs,
)
from softsae_lib.profiles import get_profile


def test_each_ablation_changes_one_thing_and_unknown_names_fail_before_training():
    p = get_profile("02_synthetic_manifolds", "smoke").replace(seeds=(3, 4))
    x = torch.zeros(10, p.ambient_dim)
    jobs = ablation_jobs(x, x, p, tuple(ABLATIONS))
    assert set(jobs) == {("ablation", name) for name in ABLATIONS}
    assert all(job.args[3].seed == 3 for job in jobs.values())  # the first seed
    longer, config = _ablation_settings("twice_the_steps", p)
    assert longer.steps == 2 * p.steps and config == {"k": p.k} and longer.replace(steps=p.steps) == p
    shorter, config = _ablation_settings("half_the_steps", p)
    assert shorter.steps == p.steps // 2 and config == {"k": p.k} and shorter.replace(steps=p.steps) == p
    annealed, _ = _ablation_settings("alpha_annealed", p)
    assert annealed.alpha_anneal_fraction == 0.2 and annealed.steps == p.steps
    assert _ablation_settings("no_hard_phase", p)[1]["hard_phase_fraction"] == 0.0
    with pytest.raises(ValueError, match="unknown ablation 'typo'"):
        ablation_jobs(x, x, p, ("twice_the_steps", "typo"))


def test_the_k_anneal_jobs_give_the_baselines_softsaes_schedule():
    p = get_profile("02_synthetic_manifolds", "smoke").replace(seeds=(5,))
    x = torch.zeros(10, p.ambient_dim)
    jobs = baseline_anneal_jobs(x, x, p, 6, ("topk", "batch_topk"))
    assert set(jobs) == {("k_anneal", "topk"), ("k_anneal", "batch_topk")}
    q = jobs[("k_anneal", "topk")].args[4]
    assert q.baseline_k_anneal and q.seed == 5 and jobs[("k_anneal", "topk")].args[1] == 6
