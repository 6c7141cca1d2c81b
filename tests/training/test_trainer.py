"""Tests for the trainer (softsae_lib.training: train_sae, TrainConfig, schedules, data, checkpoints)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from softsae_lib.batches import BatchSource
from softsae_lib.saes import ARCHITECTURES, SoftSAEConfig, make_sae
from softsae_lib.saes.schedules import steps_fraction
from softsae_lib.training import CheckpointError, TrainConfig, TrainingError, schedules, train_sae
from softsae_lib.training.checkpoint import CHECKPOINT_FILE

D, F, B = 8, 32, 64


pytestmark = pytest.mark.usefixtures("single_thread")


def _data(n: int = 640, d: int = D, seed: int = 0) -> torch.Tensor:
    """Sparse non-negative combinations of random unit directions, plus a mean offset."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(2 * F, d, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    coef = torch.rand(n, 2 * F, generator=g) * (torch.rand(n, 2 * F, generator=g) < 0.06)
    return coef @ dirs + 0.05 * torch.randn(n, d, generator=g) + 0.3


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=12, batch_size=B, lr=3e-3, warmup_steps=2, log_every=1, progress=False,
                normalization_batches=4)
    base.update(kw)
    return TrainConfig(**base)


def _model(arch: str = "soft", **kw):
    defaults = {"soft": {"k": 4}, "topk": {"k": 4}, "batch_topk": {"k": 4}, "jumprelu": {}, "relu": {}}
    return make_sae(arch, d_model=D, dict_size=F, **{**defaults[arch], **kw})


def _batches(n_batches: int, seed: int = 0) -> list[torch.Tensor]:
    x = _data(n_batches * B, seed=seed)
    return [x[i * B:(i + 1) * B].clone() for i in range(n_batches)]


def _assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


# --------------------------------------------------------------------------------------- history


@pytest.mark.parametrize("arch", ["soft", "topk", "batch_topk", "jumprelu", "relu"])
def test_history_is_a_dataframe_with_logged_columns(arch: str) -> None:
    m = _model(arch)
    init = {k: v.clone() for k, v in m.state_dict().items()}
    res = train_sae(m, _data(), _cfg(steps=7, log_every=3))
    h = res.history
    assert isinstance(h, pd.DataFrame)
    assert res.model is m and res.steps_run == 7 and not m.training
    assert list(h["step"]) == [0, 3, 6]  # every log_every steps plus the last
    for col in ("step", "loss", "l2", "l0", "lr", "k", "alpha", "hard", "fvu_batch", "dead_fraction",
                "seconds"):
        assert col in h.columns, col
    extra = {"soft": ["k_loss", "k_hat_mean", "k_hat_std"], "batch_topk": ["threshold"],
             "jumprelu": ["l0_penalty"], "relu": ["l1"], "topk": []}[arch]
    for col in extra:
        assert col in h.columns, col
    assert np.isfinite(h[["loss", "l2", "l0", "fvu_batch"]].to_numpy(dtype=float)).all()
    assert (h["seconds"].diff().dropna() >= 0).all()
    # Training changed the weights, b_dec is the geometric median (non-zero), normalisation fitted.
    assert not torch.equal(m.W_enc.detach(), init["W_enc"])
    assert torch.count_nonzero(m.b_dec) > 0 and bool(m.norm_fitted)
    norms = m.W_dec.detach().norm(dim=1)
    if arch == "relu":  # free decoder norms, initialised at 0.1 and trained
        assert (norms - 0.1).abs().max() > 1e-4
    else:  # the trainer renormalises the atoms after every step
        torch.testing.assert_close(norms, torch.ones(F), atol=1e-6, rtol=0)


def test_loss_decreases_on_easy_data() -> None:
    m = _model("topk")
    h = train_sae(m, _data(), _cfg(steps=60, lr=1e-2, warmup_steps=5, log_every=1)).history
    assert h["fvu_batch"].iloc[-5:].mean() < 0.7 * h["fvu_batch"].iloc[:3].mean()


def test_lr_schedule_follows_warmup_and_decay() -> None:
    base = 1e-2
    h = train_sae(_model("topk"), _data(),
                  _cfg(steps=20, lr=base, warmup_steps=4, decay_start=12)).history
    assert len(h) == 20
    expected = [base * schedules.lr_factor(s, 20, 4, 12) for s in range(20)]
    np.testing.assert_allclose(h["lr"].to_numpy(), expected, rtol=1e-12, atol=0)
    hand = {0: 0.0, 1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0, 11: 1.0, 12: 1.0, 14: 0.75, 16: 0.5, 19: 0.125}
    for step, factor in hand.items():
        assert h["lr"].iloc[step] == pytest.approx(base * factor, abs=1e-15), step
    assert schedules.lr_factor(20, 20, 4, 12) == 0.0  # reaches 0 at the end
    assert (h["lr"].iloc[12:].diff().dropna() < 0).all()


def test_lr_is_really_applied() -> None:
    """At step 0 the warm-up lr is 0, so one step changes nothing but b_dec (geometric median)."""
    m = _model("soft")
    init = {k: v.clone() for k, v in m.state_dict().items()}
    train_sae(m, _data(), _cfg(steps=1, warmup_steps=5))
    state = m.state_dict()
    for name in ("W_enc", "b_enc", "k_est_W1", "k_est_b1", "k_est_w2", "k_est_b2"):
        assert torch.equal(state[name], init[name]), name
    torch.testing.assert_close(state["W_dec"], init["W_dec"], atol=1e-7, rtol=0)  # renormalised
    assert not torch.equal(state["b_dec"], init["b_dec"])
    m2 = _model("soft")
    train_sae(m2, _data(), _cfg(steps=1, warmup_steps=0))
    assert not torch.equal(m2.state_dict()["W_enc"], init["W_enc"])


def test_default_lr_scales_with_dict_size() -> None:
    h = train_sae(_model("topk"), _data(), _cfg(steps=3, lr=None, warmup_steps=0)).history
    assert h["lr"].iloc[0] == pytest.approx(2e-4 / math.sqrt(F / 2**14))


def test_k_anneal_in_history_and_used_by_topk() -> None:
    h = train_sae(_model("topk", k=2), _data(), _cfg(steps=10, k_anneal_steps=6)).history
    expected = [int(D * (1 - min(s, 6) / 6) + 2 * min(s, 6) / 6) for s in range(10)]
    assert list(h["k"]) == expected
    assert expected[0] == D and expected[-1] == 2 and expected[3] == 5
    # The annealed k is what the TopK loss selects (rows have ≥ d positive pre-activations here).
    assert (h["l0"].to_numpy() <= h["k"].to_numpy()).all()
    assert h["l0"].iloc[-1] == 2.0 and h["l0"].iloc[0] > 2.0


def test_alpha_anneal_and_hard_phase_in_history() -> None:
    m = _model("soft", k=3, alpha=1e-3, alpha_anneal_fraction=steps_fraction(8, 20),
               hard_phase_fraction=steps_fraction(6, 20))
    snap = {}

    def on_step(step: int, terms: dict) -> None:
        if step == 13:  # last soft step (hard phase = steps 14..19)
            snap.update({n: p.detach().clone() for n, p in m.named_parameters()})

    h = train_sae(m, _data(), _cfg(steps=20, k_anneal_steps=4), on_step=on_step).history
    alpha = h["alpha"].to_numpy()
    expected = [(1 - min(s, 8) / 8) + 1e-3 * min(s, 8) / 8 for s in range(20)]
    np.testing.assert_allclose(alpha, expected, rtol=1e-12)
    assert alpha[0] == 1.0 and alpha[-1] == pytest.approx(1e-3)
    assert list(h["hard"]) == [False] * 14 + [True] * 6
    assert (h.loc[h["hard"], "k_loss"] == 0).all()
    assert (h.loc[~h["hard"], "k_loss"] > 0).all()
    assert list(h["k"].iloc[:5]) == [8, 6, 5, 4, 3]
    # The k-estimator is frozen in the hard phase; the encoder keeps training.
    for name in ("k_est_W1", "k_est_b1", "k_est_w2", "k_est_b2"):
        assert torch.equal(getattr(m, name).detach(), snap[name]), name
    assert not torch.equal(m.W_enc.detach(), snap["W_enc"])


def test_on_step_receives_terms() -> None:
    seen = []
    train_sae(_model("topk"), _data(), _cfg(steps=4), on_step=lambda s, t: seen.append((s, dict(t))))
    assert [s for s, _ in seen] == [0, 1, 2, 3]
    assert all({"loss", "l2", "l0"} <= set(t) for _, t in seen)


# ------------------------------------------------------------------------------------------ resume


class _Stop(Exception):
    pass


def _stop_at(step_to_stop: int):
    def on_step(step: int, terms: dict) -> None:
        if step == step_to_stop:
            raise _Stop(step)
    return on_step


@pytest.mark.parametrize("arch,model_kw,train_kw,stop", [
    # SoftSAE: checkpoints after steps 4, 9, 14, 19, 23; stopped after step 12 → resumes at step 10,
    # while α is still annealing (until 12) and before the hard phase (steps 16..23).
    ("soft", {"k": 3, "alpha": 1e-3, "alpha_anneal_fraction": 0.5,
              "hard_phase_fraction": steps_fraction(8, 24)},
     {"k_anneal_steps": 4, "dead_threshold": 3 * B}, 12),
    # BatchTopK: the inference threshold's EMA starts at step 6, stopped after step 8 → resumes at 5.
    ("batch_topk", {"k": 3, "threshold_start_step": 6, "threshold_beta": 0.9},
     {"k_anneal_steps": 4, "dead_threshold": 1}, 8),
])
def test_resume_is_bit_exact(tmp_path: Path, arch: str, model_kw: dict, train_kw: dict, stop: int) -> None:
    data = _data(1000)
    common = dict(steps=24, checkpoint_every=5, k_aux=4, **train_kw)
    a = _model(arch, **model_kw)
    hist_a = train_sae(a, data, _cfg(checkpoint_dir=str(tmp_path / "a"), **common)).history
    assert "auxk" in hist_a.columns  # dead-latent state is part of what must be restored

    b = _model(arch, **model_kw)
    cfg_b = _cfg(checkpoint_dir=str(tmp_path / "b"), **common)
    with pytest.raises(_Stop):
        train_sae(b, data, cfg_b, on_step=_stop_at(stop))
    saved = torch.load(tmp_path / "b" / CHECKPOINT_FILE, weights_only=False)
    resume_at = (stop + 1) // 5 * 5
    assert saved["step"] == resume_at  # the last checkpoint before the interruption
    assert not torch.equal(b.W_enc.detach(), saved["model"]["W_enc"])  # b moved on after it

    b2 = _model(arch, **model_kw)  # fresh model, same config
    res = train_sae(b2, data, dataclasses.replace(cfg_b, resume=True, checkpoint_every=7, log_every=1))
    assert res.steps_run == 24 - resume_at
    _assert_state_equal(a.state_dict(), b2.state_dict())
    hist_b = res.history
    cols = [c for c in hist_a.columns if c != "seconds"]
    assert list(hist_b["step"]) == list(range(24))
    pd.testing.assert_frame_equal(hist_a[cols], hist_b[cols])
    if arch == "batch_topk":
        assert float(b2.threshold) > 0


def test_fvu_mean_averages_every_step_since_the_last_row_and_survives_a_resume(tmp_path: Path) -> None:
    data = _data(1000)
    every = train_sae(_model("topk"), data, _cfg(steps=24)).history  # a row per step
    cfg = _cfg(steps=24, log_every=4, checkpoint_every=5, checkpoint_dir=str(tmp_path / "a"))
    hist = train_sae(_model("topk"), data, cfg).history
    # rows at steps 0, 4, …, 20 and the last step 23; each averages the steps after the previous row
    assert list(hist["step"]) == [0, 4, 8, 12, 16, 20, 23]
    fvu = every.set_index("step")["fvu_batch"]
    rows = list(hist["step"])
    expected = [fvu[0]] + [fvu.loc[a + 1:b].mean() for a, b in zip(rows[:-1], rows[1:], strict=True)]
    np.testing.assert_allclose(hist["fvu_mean"], expected, rtol=1e-12)
    assert not np.allclose(hist["fvu_mean"][1:], hist["fvu_batch"][1:])

    cfg_b = dataclasses.replace(cfg, checkpoint_dir=str(tmp_path / "b"))
    with pytest.raises(_Stop):  # checkpoint after step 9, halfway between the rows at 8 and 12
        train_sae(_model("topk"), data, cfg_b, on_step=_stop_at(11))
    resumed = train_sae(_model("topk"), data, dataclasses.replace(cfg_b, resume=True)).history
    cols = [c for c in hist.columns if c != "seconds"]
    pd.testing.assert_frame_equal(hist[cols], resumed[cols])


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    a, b = _model("topk"), _model("topk")
    train_sae(a, _data(), _cfg(steps=6))
    res = train_sae(b, _data(), _cfg(steps=6, checkpoint_dir=str(tmp_path), resume=True))
    assert res.steps_run == 6
    _assert_state_equal(a.state_dict(), b.state_dict())
    assert (tmp_path / CHECKPOINT_FILE).is_file()


def test_resume_with_different_train_config_refused(tmp_path: Path) -> None:
    cfg = _cfg(steps=6, checkpoint_dir=str(tmp_path), checkpoint_every=2)
    train_sae(_model("topk"), _data(), cfg)
    with pytest.raises(CheckpointError, match=r"\['lr'\]"):
        train_sae(_model("topk"), _data(), dataclasses.replace(cfg, lr=1e-4, resume=True))
    with pytest.raises(CheckpointError, match="warmup_steps"):
        train_sae(_model("topk"), _data(), dataclasses.replace(cfg, warmup_steps=3, resume=True))
    with pytest.raises(CheckpointError, match="written for arch"):
        train_sae(_model("topk", seed=1), _data(), dataclasses.replace(cfg, resume=True))
    with pytest.raises(CheckpointError, match="written for arch"):
        train_sae(_model("batch_topk"), _data(), dataclasses.replace(cfg, resume=True))
    # Fields that cannot change the result may differ.
    res = train_sae(_model("topk"), _data(),
                    dataclasses.replace(cfg, resume=True, checkpoint_every=5, log_every=4))
    assert res.steps_run == 0


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    cfg = _cfg(steps=4, checkpoint_dir=str(tmp_path))
    train_sae(_model("topk"), _data(), cfg)
    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=CHECKPOINT_FILE):
        train_sae(_model("topk"), _data(), dataclasses.replace(cfg, resume=True))


def test_checkpoint_written_atomically_without_temp_files(tmp_path: Path) -> None:
    train_sae(_model("topk"), _data(), _cfg(steps=5, checkpoint_dir=str(tmp_path), checkpoint_every=2))
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)["step"] == 5


# ------------------------------------------------------------------------------------------ errors


def test_nan_batch_raises_naming_step() -> None:
    batches = _batches(6)
    batches[3][5, 2] = float("nan")
    m = _model("topk", normalization="none")  # no normalisation pass: the training loop sees it
    with pytest.raises(TrainingError, match=r"step 3: input batch has 1 NaN/Inf.*row 5, column 2"):
        train_sae(m, batches, _cfg(steps=6))
    # With a normalisation pass the same batch is caught there, under the same step number.
    with pytest.raises(TrainingError, match="step 3"):
        train_sae(_model("topk"), batches, _cfg(steps=6, normalization_batches=6))


def test_batch_check_passes_finite_values_whose_sum_overflows() -> None:
    """The fast check sums the batch; a finite batch whose sum is inf must still pass, and one
    non-finite value among such values must still be found and named."""
    from softsae_lib.training.trainer import _check_batch

    x = torch.full((4, 3), 3e38)  # finite float32; the sum is +inf
    _check_batch(x, 0)
    x[2, 1] = float("-inf")
    with pytest.raises(TrainingError, match=r"step 7: input batch has 1 NaN/Inf.*row 2, column 1"):
        _check_batch(x, 7)


def test_huge_lr_diverges_with_step_named() -> None:
    m = _model("topk")
    with pytest.raises(TrainingError, match="step 1: reconstruction loss .* diverged"):
        train_sae(m, _data(), _cfg(steps=10, lr=100.0, warmup_steps=0))


def test_outlier_batch_diverges_with_step_named() -> None:
    batches = _batches(8)
    batches[5] = batches[5] + 1e3  # far outside the fitted normalisation
    with pytest.raises(TrainingError, match="step 5: reconstruction loss"):
        train_sae(_model("soft"), batches, _cfg(steps=8, normalization_batches=2))


def test_wrong_d_raises() -> None:
    with pytest.raises(ValueError, match=r"data must have shape \(N, 8\)"):
        train_sae(_model("topk"), _data(d=7), _cfg())
    batches = _batches(4)
    batches[2] = batches[2][:, :7]
    with pytest.raises(ValueError, match="step 2: batch has shape"):
        train_sae(_model("topk", normalization="none"), batches, _cfg(steps=4))
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train_sae(_model("topk"), _data(n=10), _cfg())
    with pytest.raises(TypeError, match="data must be"):
        train_sae(_model("topk"), 3.0, _cfg())


def test_bad_train_config() -> None:
    with pytest.raises(ValueError):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="hard_phase_fraction"):
        SoftSAEConfig(d_model=4, dict_size=8, k=2, hard_phase_fraction=-1)
    with pytest.raises(ValueError):
        TrainConfig(log_every=0)


# -------------------------------------------------------------------------------------- data kinds


def test_tensor_memmap_and_ndarray_give_identical_results(tmp_path: Path) -> None:
    x = _data(700)
    path = tmp_path / "acts.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=tuple(x.shape))
    mm[:] = x.numpy()
    mm.flush()
    del mm
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=tuple(x.shape))
    cfg = _cfg(steps=15, seed=3, k_anneal_steps=3)
    states, hists = [], []
    for data in (x, mm, x.numpy()):
        m = _model("soft", alpha_anneal_fraction=steps_fraction(5, 15))
        hists.append(train_sae(m, data, cfg).history)
        states.append(m.state_dict())
    _assert_state_equal(states[0], states[1])
    _assert_state_equal(states[0], states[2])
    assert list(hists[0]["loss"]) == list(hists[1]["loss"])
    # A different data-order seed gives a different model.
    m = _model("soft")
    train_sae(m, x, dataclasses.replace(cfg, seed=4))
    assert not torch.equal(m.W_enc.detach(), states[0]["W_enc"])


def test_list_and_generator_of_batches(tmp_path: Path) -> None:
    batches = _batches(8)
    cfg = _cfg(steps=8, normalization_batches=3)
    a = _model("topk")
    h = train_sae(a, batches, cfg).history
    assert len(h) == 8 and np.isfinite(h["loss"]).all()
    # A one-shot generator of exactly `steps` batches works (normalisation reads ahead) and
    # trains on the same batches in the same order as the list.
    b = _model("topk")
    train_sae(b, (x for x in batches), cfg)
    _assert_state_equal(a.state_dict(), b.state_dict())
    # A list shorter than the run is cycled (epochs).
    c = _model("topk")
    assert train_sae(c, batches[:3], cfg).steps_run == 8


def test_batch_source_one_shot_read_ahead() -> None:
    batches = _batches(4)
    src = BatchSource((x for x in batches), batch_size=B, d_model=D)
    assert src.one_shot and not BatchSource(batches, batch_size=B, d_model=D).one_shot
    ahead = [src.batch(i, keep=True) for i in range(2)]
    assert torch.equal(src.batch(0), ahead[0]) and torch.equal(src.batch(1), ahead[1])
    assert torch.equal(src.batch(2), batches[2])
    with pytest.raises(ValueError, match="step 0: cannot go back"):
        src.batch(0)  # handed out already: a generator cannot replay it
    # A re-iterable list can go back.
    lst = BatchSource(batches, batch_size=B, d_model=D)
    assert torch.equal(lst.batch(3), batches[3]) and torch.equal(lst.batch(1), batches[1])
    assert torch.equal(lst.batch(5), batches[1])  # next epoch


def test_exhausted_generator_raises_naming_step() -> None:
    batches = _batches(5)
    with pytest.raises(ValueError, match="exhausted at step 5"):
        train_sae(_model("topk", normalization="none"), (x for x in batches), _cfg(steps=8))
    with pytest.raises(ValueError, match="exhausted at step 5"):
        train_sae(_model("topk"), iter(batches), _cfg(steps=8, normalization_batches=100))


def test_float64_and_numpy_batches_accepted() -> None:
    batches = [b.double().numpy() for b in _batches(4)]
    m = _model("topk")
    h = train_sae(m, batches, _cfg(steps=4)).history
    assert m.W_enc.dtype == torch.float32 and np.isfinite(h["loss"]).all()


# ------------------------------------------------------------------------------------ dead latents


def test_dead_latents_get_auxk(tmp_path: Path) -> None:
    m = _model("topk", k=2)
    m.fit_normalization(_data())
    with torch.no_grad():
        m.b_enc[:6] = -1e3  # these six latents can never fire
    steps = 10
    h = train_sae(m, _data(), _cfg(steps=steps, dead_threshold=B, checkpoint_dir=str(tmp_path))).history
    assert "auxk" in h.columns
    assert np.isnan(h["auxk"].iloc[0])  # nothing is dead before the first batch is counted
    assert (h["auxk"].iloc[1:] > 0).all()
    assert (h["dead_fraction"] >= 6 / F).all()
    since = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)["since_fired"]
    assert (since[:6] == steps * B).all()
    assert (since % B == 0).all() and (since <= steps * B).all()
    assert (since[6:] < steps * B).any()
    # The loss includes auxk_weight · auxk.
    row = h.iloc[-1]
    assert row["loss"] == pytest.approx(row["l2"] + row["auxk"] / 32, rel=1e-5)


def test_no_auxk_when_nothing_dead_or_not_used() -> None:
    h = train_sae(_model("topk"), _data(), _cfg(steps=5)).history
    assert "auxk" not in h.columns and (h["dead_fraction"] == 0).all()
    h = train_sae(_model("relu"), _data(), _cfg(steps=5, dead_threshold=1)).history
    assert "auxk" not in h.columns and (h["dead_fraction"] > 0).any()
    h = train_sae(_model("topk"), _data(), _cfg(steps=5, dead_threshold=1, auxk_weight=0.0)).history
    assert "auxk" not in h.columns


def test_second_run_on_trained_model_keeps_b_dec():
    """Fine-tuning a trained (or loaded) model must not reset b_dec to a fresh geometric median."""
    torch.manual_seed(0)
    x = torch.randn(512, 8) + 3.0
    m = make_sae("topk", d_model=8, dict_size=32, k=2)
    cfg = TrainConfig(steps=5, batch_size=64, lr=1e-2, warmup_steps=0, progress=False)
    train_sae(m, x, cfg)
    assert bool(m.b_dec_initialized)
    before = m.b_dec.detach().clone()
    train_sae(m, x, TrainConfig(steps=1, batch_size=64, lr=0.0, warmup_steps=0, progress=False))
    assert torch.equal(m.b_dec, before)


@pytest.mark.parametrize("arch", ["soft", "batch_topk"])
def test_heldout_fvu_is_logged_and_leaves_training_unchanged(arch: str) -> None:
    data, held = _data(1000), _data(200, seed=7)
    kw = {"threshold_start_step": 6} if arch == "batch_topk" else {"hard_phase_fraction": 0.25}
    plain = _model(arch, **kw)
    base = train_sae(plain, data, _cfg(steps=16, log_every=4)).history
    model = _model(arch, **kw)
    hist = train_sae(model, data, _cfg(steps=16, log_every=4), heldout=held, heldout_from=5).history
    _assert_state_equal(plain.state_dict(), model.state_dict())  # evaluating changed nothing
    cols = [c for c in base.columns if c != "seconds"]
    pd.testing.assert_frame_equal(base[cols], hist[cols])
    # rows at steps 0, 4, 8, 12, 15: NaN before heldout_from, then the training objective's FVU on
    # the held-out rows at that step's schedule (the last row: SoftSAE's hard phase)
    assert list(hist["step"]) == [0, 4, 8, 12, 15]
    assert np.isnan(hist["fvu_heldout"][:2]).all() and np.isfinite(hist["fvu_heldout"][2:]).all()
    ctx = model.step_context(15, _cfg(steps=16))
    with torch.no_grad():
        x_n = model.normalize(held)
        expected = model.loss(x_n, ctx).terms["l2"] / float((x_n - x_n.mean(0)).pow(2).sum(-1).mean())
    assert hist["fvu_heldout"].iloc[-1] == pytest.approx(expected, rel=1e-6)
    assert hist["fvu_heldout"].iloc[-1] != pytest.approx(hist["fvu_batch"].iloc[-1], rel=1e-3)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_heldout_evaluation_changes_no_architecture_state(arch: str) -> None:
    """Every registered model's ``loss`` on held-out rows leaves its parameters, buffers (thresholds,
    firing-rate EMAs, tree allocations) and history exactly as without them."""
    data, held = _data(1000), _data(200, seed=7)
    kw = {"k": 4} if "k" in {f.name for f in dataclasses.fields(ARCHITECTURES[arch].config_cls)} else {}
    a, b = (make_sae(arch, d_model=D, dict_size=F, seed=0, **kw) for _ in range(2))
    cfg = _cfg(steps=16, log_every=2, k_anneal_steps=4, dead_threshold=2 * B)
    hist_a = train_sae(a, data, cfg).history
    hist_b = train_sae(b, data, cfg, heldout=held).history
    _assert_state_equal(a.state_dict(), b.state_dict())
    cols = [c for c in hist_a.columns if c != "seconds"]
    pd.testing.assert_frame_equal(hist_a[cols], hist_b[cols])
    assert np.isfinite(hist_b["fvu_heldout"]).all()


def test_bad_heldout_is_named() -> None:
    data = _data(640)
    with pytest.raises(ValueError, match=r"heldout must have shape \(M ≥ 1, 8\), got \(10, 5\)"):
        train_sae(_model("topk"), data, _cfg(), heldout=torch.zeros(10, 5))
    bad = torch.zeros(10, D)
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="heldout has 1 NaN/Inf value.*row 3, column 2"):
        train_sae(_model("topk"), data, _cfg(), heldout=bad)
