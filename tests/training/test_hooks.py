"""The trainer and evaluation reach architectures only through the SAE hooks (issue 17 §1): a third-party
architecture with its own auxiliary loss, phase and per-sample statistic trains and evaluates without
trainer changes; SoftSAE's schedule is its own; old saved configs and checkpoints still load / resume."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from softsae_lib.evaluation import evaluate_sae
from softsae_lib.experiments.matched import model_config, train_config
from softsae_lib.io import CONFIG_FILE, config_digest, load_sae, save_sae
from softsae_lib.profiles import get_profile
from softsae_lib.saes import ARCHITECTURES, SAE, LossOutput, SAEConfig, StepContext, make_sae, register_sae
from softsae_lib.saes.schedules import annealed_alpha, fraction_steps, in_hard_phase, steps_fraction
from softsae_lib.training import TrainConfig, train_sae
from softsae_lib.training.checkpoint import CHECKPOINT_FILE
from softsae_lib.training.config import migrate_train_config

D, F, B = 8, 32, 64
pytestmark = pytest.mark.usefixtures("single_thread")


def _data(n: int = 640, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) * torch.linspace(0.3, 2.0, D)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(steps=12, batch_size=B, lr=3e-3, warmup_steps=2, log_every=1,
                                 progress=False, normalization_batches=4), **kw})


# ------------------------------------------------------------------------- a third-party architecture


@dataclass
class _WarmConfig(SAEConfig):
    k: int = 4
    """Active latents per sample."""
    warm_steps: int = 3
    """Steps of the 'warm' phase at the start, in which the loss is doubled."""


class _WarmTopK(SAE):
    """TopK with a 'warm' first phase, an auxiliary loss on the trainer's dead mask and a per-sample
    'peak' statistic: everything the trainer and evaluation must reach through hooks."""

    arch = "test_hooks_warm_topk"
    config_cls = _WarmConfig

    def step_context(self, step: int, train) -> StepContext:
        ctx = super().step_context(step, train)
        return dataclasses.replace(ctx, phase="warm" if step < self.config.warm_steps else ctx.phase)

    def encode_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        r = self.pre_activations(x_n).relu()
        vals, idx = r.topk(self.config.k, dim=-1)
        return torch.zeros_like(r).scatter(-1, idx, vals)

    def loss(self, x_n: torch.Tensor, ctx: StepContext) -> LossOutput:
        z = self.encode_normalized(x_n)
        recon = self.decode_normalized(z)
        l2 = self.recon_loss(x_n, recon)
        scale = 2.0 if ctx.phase == "warm" else 1.0
        return LossOutput.from_active(scale * l2, recon, self.pre_activations(x_n).relu(), z > 0,
                                      {"l2": l2.item()})

    def needs_dead_mask(self, train) -> bool:
        return True

    def auxiliary_loss(self, out, x_n, ctx, dead, train):
        self.seen_dead.append(None if dead is None else dead.clone())
        term = 0.5 * out.pre_acts.mean()
        return term, {"mean_act": term.item()}

    def per_sample_stats(self, x: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**super().per_sample_stats(x, z), "peak": z.abs().max(dim=1).values}

    def per_sample_summary(self, per_sample: dict[str, torch.Tensor]) -> dict:
        return {"peak_mean": float(per_sample["peak"].mean())}


@pytest.fixture
def warm_arch():
    register_sae(_WarmTopK)
    try:
        yield _WarmTopK
    finally:
        ARCHITECTURES.pop(_WarmTopK.arch, None)  # keep the registry of other tests unchanged


def test_third_party_hooks_drive_training_and_evaluation(warm_arch) -> None:
    m = make_sae(warm_arch.arch, d_model=D, dict_size=F)
    m.seen_dead = []
    h = train_sae(m, _data(), _cfg(steps=8, dead_threshold=2 * B)).history
    assert list(h["phase"]) == ["warm"] * 3 + ["train"] * 5
    assert list(h["hard"]) == [True] * 3 + [False] * 5  # 'hard' = any special phase
    # the auxiliary term is added and logged; the warm phase doubles the model's own loss
    scale = pd.Series([2.0] * 3 + [1.0] * 5)
    assert (h["loss"] - (scale * h["l2"] + h["mean_act"])).abs().max() < 1e-5
    # the dead mask is passed once a latent can be dead (not before 2 batches), with shape (F,)
    assert m.seen_dead[:2] == [None, None] and m.seen_dead[2] is not None
    assert all(d.shape == (F,) and d.dtype == torch.bool for d in m.seen_dead if d is not None)
    assert (h["alive_latents"] == F - (h["dead_fraction"] * F).round()).all()
    assert h["alive_latents"].dtype.kind == "i" and set(h["k"]) == {4} and set(h["alpha"]) == {1.0}
    ev = evaluate_sae(m, _data(200, seed=1), return_per_sample=True)
    assert set(ev["per_sample"]) == {"l0", "peak"} and ev["per_sample"]["peak"].shape == (200,)
    assert ev["peak_mean"] == pytest.approx(float(ev["per_sample"]["peak"].mean()))
    assert (ev["per_sample"]["l0"] == 4).all()


def test_history_has_phase_and_alive_latents_for_soft() -> None:
    m = make_sae("soft", d_model=D, dict_size=F, k=4, hard_phase_fraction=0.25)
    h = train_sae(m, _data(), _cfg(steps=8)).history
    assert list(h["phase"]) == ["train"] * 6 + ["hard"] * 2
    assert list(h["hard"]) == [False] * 6 + [True] * 2
    assert {"k_hat_mean", "k_hat_std", "alpha", "fvu_batch", "dead_fraction", "seconds", "lr"} <= set(h)
    assert (h["alive_latents"] == F).all()


# --------------------------------------------------------------------------- SoftSAE's own schedule


@pytest.mark.parametrize("steps", [1, 7, 10, 33, 97, 300, 1001, 12_207, 40_000])
@pytest.mark.parametrize("anneal", [None, 0.05, 0.2, 1 / 3])
def test_soft_recipe_equals_the_old_explicit_schedule(steps: int, anneal: float | None) -> None:
    """The experiment recipe (hard phase = steps // 10, α anneal over max(1, int(f·steps)) steps) gives
    the step contexts the old TrainConfig(alpha_anneal_steps, hard_topk_steps) gave."""
    p = get_profile("02_synthetic_manifolds", "smoke").replace(steps=steps, alpha_anneal_fraction=anneal)
    m = make_sae("soft", d_model=D, dict_size=F, **model_config(p, "soft", {"k": 4}))
    old_anneal = max(1, int(anneal * steps)) if anneal else None
    cfg = train_config(p, "soft")
    for step in sorted({0, 1, steps // 2, steps - steps // 10 - 1, steps - steps // 10, steps - 1}):
        if not 0 <= step < steps:
            continue
        ctx = m.step_context(step, cfg)
        assert ctx.alpha == annealed_alpha(step, m.config.alpha, old_anneal)
        assert ctx.hard == in_hard_phase(step, steps, steps // 10)


def test_steps_fraction_round_trips() -> None:
    for steps in range(1, 400):
        for n in range(steps + 1):
            assert fraction_steps(steps_fraction(n, steps), steps) == n
    assert int((15 / 22) * 22) == 14  # why steps_fraction exists


def test_k_anneal_for_baselines_is_one_profile_switch() -> None:
    q = get_profile("02_synthetic_manifolds", "smoke")
    assert not q.baseline_k_anneal  # the default: only SoftSAE's published recipe anneals k
    assert train_config(q, "soft").k_anneal_steps == max(1, q.steps // 20)
    assert train_config(q, "topk").k_anneal_steps is None
    assert train_config(q, "batch_topk").k_anneal_steps is None
    p = q.replace(baseline_k_anneal=True)  # every architecture anneals k (the ablation)
    assert train_config(p, "soft") == train_config(p, "topk") == train_config(p, "batch_topk")
    assert train_config(p, "topk").k_anneal_steps == max(1, p.steps // 20)
    assert model_config(p, "topk", {"k": 3}) == {"k": 3}
    assert model_config(p, "soft", {"k": 3, "hard_phase_fraction": 0.0})["hard_phase_fraction"] == 0.0


# ------------------------------------------------------------------------------------ old formats


def test_old_train_config_fields_migrate() -> None:
    old = {"steps": 5, "auxk_alpha": 0.1, "alpha_anneal_steps": 3, "hard_topk_steps": None}
    assert migrate_train_config(old) == {"steps": 5, "auxk_weight": 0.1}
    assert migrate_train_config({"auxk_weight": 0.2}) == {"auxk_weight": 0.2}


def _rewrite_config(folder: Path, edit) -> None:
    path = folder / CONFIG_FILE
    doc = json.loads(path.read_text())
    edit(doc)
    if doc["format_version"] == 2:
        doc["config_sha256"] = config_digest(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("version", [1, 2])
def test_soft_saved_without_schedule_fields_loads_with_no_schedule(tmp_path: Path, version: int) -> None:
    m = make_sae("soft", d_model=D, dict_size=F, k=4, seed=3)
    save_sae(m, tmp_path)

    def old_format(doc: dict) -> None:
        del doc["config"]["alpha_anneal_fraction"], doc["config"]["hard_phase_fraction"]
        if version == 1:
            weights = tmp_path / doc["weights_file"]
            weights.rename(tmp_path / "model.safetensors")
            for key in ("weights_file", "config_sha256"):
                del doc[key]
        doc["format_version"] = version

    _rewrite_config(tmp_path, old_format)
    loaded = load_sae(tmp_path)
    assert loaded.config == m.config
    assert loaded.config.alpha_anneal_fraction is None and loaded.config.hard_phase_fraction == 0.0
    for name, value in m.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    ctx = loaded.step_context(99, _cfg(steps=100))
    assert not ctx.hard and ctx.alpha == loaded.config.alpha  # the old behaviour: no anneal, no hard phase


def test_checkpoint_from_the_old_format_resumes_bit_exact(tmp_path: Path) -> None:
    """A checkpoint whose TrainConfig has auxk_alpha / alpha_anneal_steps / hard_topk_steps and whose
    SoftSAE config lacks the schedule fields resumes into the run the new fields describe."""
    steps, anneal, hard = 24, 9, 5
    model_kw = dict(d_model=D, dict_size=F, k=3, alpha=1e-3,
                    alpha_anneal_fraction=steps_fraction(anneal, steps),
                    hard_phase_fraction=steps_fraction(hard, steps))
    common = dict(steps=steps, checkpoint_every=5, k_aux=4, k_anneal_steps=4, dead_threshold=3 * B,
                  auxk_weight=0.05)
    data = _data(1000)
    a = make_sae("soft", **model_kw)
    hist_a = train_sae(a, data, _cfg(checkpoint_dir=str(tmp_path / "a"), **common)).history
    assert "auxk" in hist_a.columns and hist_a["hard"].sum() == hard

    def stop(step: int, terms: dict) -> None:
        if step == 11:  # after the checkpoint of step 10
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sae(make_sae("soft", **model_kw), data, _cfg(checkpoint_dir=str(tmp_path / "b"), **common),
                  on_step=stop)
    path = tmp_path / "b" / CHECKPOINT_FILE
    saved = torch.load(path, weights_only=True)
    assert saved["step"] == 10
    # what the previous version wrote: old TrainConfig names, SoftSAE config without the new fields,
    # history rows without 'phase' / 'alive_latents'
    train = dict(saved["train_config"])
    train["auxk_alpha"] = train.pop("auxk_weight")
    train.update(alpha_anneal_steps=anneal, hard_topk_steps=hard)
    saved["train_config"] = train
    for key in ("alpha_anneal_fraction", "hard_phase_fraction"):
        del saved["model_config"][key]
    saved["history"] = [{k: v for k, v in row.items() if k not in ("phase", "alive_latents")}
                        for row in saved["history"]]
    torch.save(saved, path)

    b = make_sae("soft", **model_kw)
    res = train_sae(b, data, _cfg(checkpoint_dir=str(tmp_path / "b"), resume=True, **common))
    assert res.steps_run == steps - 10
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name
    cols = [c for c in hist_a.columns if c not in ("seconds", "phase", "alive_latents")]
    pd.testing.assert_frame_equal(hist_a[cols], res.history[cols])
    assert list(res.history["phase"].iloc[10:]) == list(hist_a["phase"].iloc[10:])
