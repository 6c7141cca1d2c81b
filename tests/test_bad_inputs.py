"""Bad-input tests for training, the selection ops, the LID estimators and the command line
(issue 14): every case raises at once with a message naming the input, or gives the right result."""

from __future__ import annotations

import math
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from softsae_lib.lid import mle
from softsae_lib.ops.hard_topk import batch_topk, per_row_topk, topk_mask
from softsae_lib.ops.soft_topk import soft_topk, soft_topk_gate
from softsae_lib.saes import make_sae
from softsae_lib.training import TrainConfig, train_sae

pytestmark = pytest.mark.usefixtures("single_thread")
D = 8


def _model():
    return make_sae("topk", d_model=D, dict_size=16, k=2, seed=0)


# ------------------------------------------------------------------------------------------ TrainConfig


@pytest.mark.parametrize("field,value", [
    ("grad_clip", -1.0), ("grad_clip", 0.0), ("grad_clip", math.nan), ("warmup_steps", -1),
    ("decay_start", -5), ("steps", 2.5), ("batch_size", 0), ("lr", -1e-3), ("lr", math.inf),
    ("adam_betas", (1.0, 0.9)), ("adam_betas", (0.9,)), ("auxk_weight", -0.1),
    ("divergence_factor", 0.0), ("dead_threshold", -1), ("k_aux", 0), ("resume", "yes"),
    ("seed", -1), ("normalization_batches", 0), ("sparsity_warmup_steps", -2), ("log_every", True),
    ("checkpoint_dir", 3), ("progress", 1),
])
def test_train_config_rejects(field: str, value) -> None:
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field} must be"):
        TrainConfig(**{field: value})


def test_train_config_accepts_edges() -> None:
    cfg = TrainConfig(grad_clip=None, warmup_steps=0, decay_start=0, lr=0.0, adam_betas=[0.0, 0.999],
                      checkpoint_dir=Path("/tmp/x"), auxk_weight=0)
    assert cfg.adam_betas == (0.0, 0.999) and cfg.checkpoint_dir == "/tmp/x"


def test_negative_grad_clip_no_longer_ascends() -> None:
    """The audit's case: grad_clip < 0 trained *up* the loss; now it is refused up front."""
    with pytest.raises(ValueError, match="grad_clip"):
        train_sae(_model(), torch.randn(64, D), TrainConfig(steps=2, batch_size=16, grad_clip=-1.0))


# ------------------------------------------------------------------------------------------ data


class _Alarm:
    """Fail instead of hanging (the audit's two hangs)."""

    def __enter__(self):
        signal.signal(signal.SIGALRM, lambda *_: pytest.fail("hang"))
        signal.alarm(20)

    def __exit__(self, *exc):
        signal.alarm(0)


@pytest.mark.parametrize("make", [lambda: [], lambda: torch.utils.data.DataLoader(
    torch.utils.data.TensorDataset(torch.zeros(0, D)), batch_size=4), lambda: iter([])])
def test_empty_iterable_raises_at_once(make) -> None:
    with _Alarm(), pytest.raises(ValueError, match="yielded no batches|exhausted at step 0"):
        train_sae(_model(), make(), TrainConfig(steps=3, warmup_steps=0, progress=False))


@pytest.mark.parametrize("data,name", [("acts.npy", "str"), ({"x": torch.zeros(4, D)}, "dict"),
                                       (b"abc", "bytes")])
def test_data_of_wrong_kind_named(data, name: str) -> None:
    with pytest.raises(TypeError, match=f"got a {name}"):
        train_sae(_model(), data, TrainConfig(steps=1, progress=False))


def test_cfg_of_wrong_kind() -> None:
    with pytest.raises(TypeError, match="cfg must be a TrainConfig, got dict"):
        train_sae(_model(), torch.zeros(16, D), {"steps": 1})


# ------------------------------------------------------------------------------------------ soft top-k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [1e-20, 1e-40, 1e-300])
def test_soft_topk_tiny_alpha_with_ties_at_window_edge(dtype, alpha: float) -> None:
    # n = 20, k = 1.5 → window K = 6; the tie block 3.0 straddles the window edge.
    x = torch.tensor([[5.0, 4.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0] + [0.0] * 12], dtype=dtype)
    for k in (1.5, 2.0, 3.25):
        p = soft_topk(x, k, alpha)
        assert torch.isfinite(p).all()
        assert float(p.sum()) == pytest.approx(k, abs=1e-5)
        assert torch.all(p[0, 2:8] == p[0, 2])  # ties share equally
        z = soft_topk_gate(x, k, alpha).z
        torch.testing.assert_close(z, x * p)


def test_soft_topk_tiny_alpha_matches_hard_limit() -> None:
    """Distinct values and α far below their resolution: ones, frac(k), zeros (the α → 0 limit)."""
    x = torch.tensor([[3.0, 2.0, 1.0, 0.5, 0.0]])
    for alpha in (1e-16, 1e-30):
        p = soft_topk(x, 1.9, alpha)
        torch.testing.assert_close(p, torch.tensor([[1.0, 0.9, 0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("window,match", [(0, "window must be an int ≥ 1"), (-3, "window must be an int ≥ 1"),
                                          (2.5, "window must be an int ≥ 1"),
                                          (3, r"window=3 is too small for max k = 3 \(n = 10\)")])
def test_soft_topk_bad_window(window, match: str) -> None:
    x = torch.randn(2, 10)
    with pytest.raises(ValueError, match=match):
        soft_topk(x, 3.0, 0.1, window=window)
    with pytest.raises(ValueError, match=match):
        soft_topk_gate(x, 3.0, 0.1, window=window)


def test_soft_topk_large_window_still_exact() -> None:
    x = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(soft_topk(x, 3.0, 0.1, window=9), soft_topk(x, 3.0, 0.1))


@pytest.mark.parametrize("shape", [(3, 0), (0,)])
def test_soft_topk_empty_last_dimension(shape) -> None:
    with pytest.raises(ValueError, match="empty last dimension"):
        soft_topk(torch.zeros(shape), 0.0, 0.1)


# ------------------------------------------------------------------------------------------ hard top-k


@pytest.mark.parametrize("fn", [topk_mask, per_row_topk, batch_topk])
def test_hard_topk_refuses_nan(fn) -> None:
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    x[1, 4] = math.nan
    with pytest.raises(ValueError, match="NaN in row 1"):
        fn(x, 2)


def test_hard_topk_accepts_opposite_infinities() -> None:
    """inf + (−inf) makes the cheap sum NaN; the exact check must then find no NaN."""
    x = torch.tensor([[math.inf, -math.inf, 0.0, 1.0]])
    assert topk_mask(x, 2).tolist() == [[True, False, False, True]]


# ------------------------------------------------------------------------------------------ LID


def test_mle_zero_distance_raises_with_duplicate_advice() -> None:
    dist = torch.tensor([[0.0, 1.0, 2.0], [0.5, 1.0, 2.0], [0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"2 of 3 points have a zero neighbour distance \(first: row 0\)"
                                         r".*duplicates='exclude'"):
        mle(dist)
    assert torch.isfinite(mle(dist[1:2])).all()


# ------------------------------------------------------------------------------------------ CLI


def _cli(tmp: Path, capsys, *extra: str, data: str = "ok.npy") -> tuple[int, str]:
    from softsae_lib.__main__ import main

    np.save(tmp / "ok.npy", np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32))
    threads = torch.get_num_threads()
    try:
        rc = main(["train", "--data", str(tmp / data), "--arch", "topk", "--dict-size", "8", "--k", "2",
                      "--steps", "2", "--batch-size", "16", "--warmup-steps", "1",
                      *(extra or ("--out", str(tmp / "out")))])
    finally:
        torch.set_num_threads(threads)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("kind,match", [
    ("truncated", "bad.npy: not a readable .npy array"),
    ("garbage", r"bad.npy: not a .npy file \(no NumPy header"),
    ("object", "bad.npy: holds Python objects, not numbers"),
    ("strings", "bad.npy: expected floating-point activations, got dtype <U1"),
    ("missing", "bad.npy: no such file or folder"),
])
def test_cli_bad_npy(tmp_path: Path, capsys, kind: str, match: str) -> None:
    bad = tmp_path / "bad.npy"
    if kind == "truncated":
        np.save(bad, np.zeros((64, 4), np.float32))
        bad.write_bytes(bad.read_bytes()[:150])
    elif kind == "garbage":
        bad.write_bytes(b"PK\x03\x04 not numpy at all")
    elif kind == "object":
        np.save(bad, np.array([{"a": 1}, None], dtype=object))
    elif kind == "strings":
        np.save(bad, np.array([["a", "b"]]))
    rc, err = _cli(tmp_path, capsys, data="bad.npy")
    assert rc == 2 and err.count("\n") == 1
    assert "--data" in err and len(re.findall(match, err)) == 1
    assert "unsafely" not in err and "Traceback" not in err


@pytest.mark.parametrize("setting,match", [('alpha="x"', '--set alpha="x": expected a number'),
                                           ("k=[1]", "--set k=\\[1\\]: expected an integer"),
                                           ("nope=1", "--set nope=1: SoftSAEConfig has no field 'nope'"),
                                           ("k", "--set 'k': expected KEY=VALUE")])
def test_cli_bad_set(tmp_path: Path, capsys, setting: str, match: str) -> None:
    rc, err = _cli(tmp_path, capsys, "--arch", "soft", "--set", setting, "--out", str(tmp_path / "o"))
    assert rc == 2 and len(re.findall(match, err)) == 1


def test_cli_out_is_a_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "f").write_text("x")
    rc, err = _cli(tmp_path, capsys, "--out", str(tmp_path / "f"))
    assert rc == 2 and "--out" in err and "is a file" in err
    assert (tmp_path / "f").read_text() == "x"


def test_cli_good_run_still_works(tmp_path: Path, capsys) -> None:
    from softsae_lib.io import load_sae

    rc, _ = _cli(tmp_path, capsys)
    assert rc == 0 and load_sae(tmp_path / "out" / "model").arch == "topk"
