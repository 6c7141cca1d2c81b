"""Tests for save_sae / load_sae (softsae_lib.io) and atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from builders import gaussian

from softsae_lib.atomic import atomic_path, atomic_write_text
from softsae_lib.io import (
    CONFIG_FILE,
    SAEFileError,
    config_digest,
    load_sae,
    read_sae_config,
    save_sae,
    weights_path,
)
from softsae_lib.saes import ARCHITECTURES, make_sae

D, F, K = 8, 24, 3
ARCH_KW = {
    "soft": {"k": K, "k_max": 5.5, "alpha": 1e-3, "k_loss_weight": 0.5},
    "topk": {"k": K},
    "batch_topk": {"k": K, "threshold_beta": 0.9, "threshold_start_step": 7},
    "jumprelu": {"sparsity_coeff": 0.02, "target_l0": 3.0, "bandwidth": 0.01},
    "relu": {"l1_coeff": 1.5},
    "matryoshka": {"k": K, "group_sizes": (4, 8, 12)},
    "feature_choice": {"k": K, "capacity": "uniform", "zipf_exponent": 0.5},
    "mutual_choice": {"k": K, "underuse_gamma": 0.2},
    "sparsemax_attention": {"target_support": 4.0, "dense_threshold": 0.2},
    "tree": {"k": K, "layer_sizes": (6, 18), "layer_k": (2, 1)},
}


pytestmark = pytest.mark.usefixtures("single_thread")


def _x(n: int = 32, d: int = D, seed: int = 0) -> torch.Tensor:
    return gaussian(n, d, seed, scale=2, shift=1)


def _trained_like(arch: str, d: int = D, normalization: str = "scale_shift"):
    """A model whose every state tensor differs from a fresh init (as after training)."""
    m = make_sae(arch, d_model=d, dict_size=F, normalization=normalization, seed=11, **ARCH_KW[arch])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    m.fit_normalization(_x(200, d=d))
    if hasattr(m, "calibrate_threshold"):  # BatchTopK family: inference needs θ
        m.calibrate_threshold([_x(16, d=d, seed=s) for s in range(3)])
    return m


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_round_trip_exact(tmp_path: Path, arch: str) -> None:
    m = _trained_like(arch)
    folder = save_sae(m, tmp_path / "sae", metadata={"note": "hello", "n": 3})
    assert folder == tmp_path / "sae"
    loaded = load_sae(folder)  # no class argument needed
    assert type(loaded) is type(m)
    assert loaded.config == m.config
    s0, s1 = m.state_dict(), loaded.state_dict()
    assert s0.keys() == s1.keys()
    for name in s0:
        assert s0[name].dtype == s1[name].dtype, name
        assert torch.equal(s0[name], s1[name]), name
    assert bool(loaded.norm_fitted)
    assert torch.count_nonzero(loaded.norm_shift) > 0 and float(loaded.norm_scale) != 1.0
    if arch == "batch_topk":
        assert float(loaded.threshold) > 0
    x = _x(20, seed=5)
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))
        assert torch.equal(loaded.encode(x), m.encode(x))
    doc = read_sae_config(folder)
    assert doc["arch"] == arch and doc["metadata"] == {"note": "hello", "n": 3}


def test_no_temp_files_left(tmp_path: Path) -> None:
    m = _trained_like("soft")
    save_sae(m, tmp_path / "a")
    save_sae(m, tmp_path / "a")  # overwriting an existing save too
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted([CONFIG_FILE, weights_path(tmp_path / "a").name])


def test_overwrite_replaces_old_model(tmp_path: Path) -> None:
    save_sae(_trained_like("topk"), tmp_path / "a")
    m2 = make_sae("relu", d_model=D, dict_size=F, seed=3)
    save_sae(m2, tmp_path / "a")
    loaded = load_sae(tmp_path / "a")
    assert loaded.arch == "relu" and torch.equal(loaded.W_dec, m2.W_dec)


def test_flipped_byte_detected(tmp_path: Path) -> None:
    save_sae(_trained_like("topk"), tmp_path / "a")
    w = weights_path(tmp_path / "a")
    data = bytearray(w.read_bytes())
    data[len(data) - 10] ^= 0x01  # inside the tensor payload, so safetensors itself would not notice
    w.write_bytes(bytes(data))
    with pytest.raises(SAEFileError, match=w.name) as info:
        load_sae(tmp_path / "a")
    assert "checksum" in str(info.value)


def test_truncated_weights_detected(tmp_path: Path) -> None:
    save_sae(_trained_like("soft"), tmp_path / "a")
    w = weights_path(tmp_path / "a")
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(SAEFileError, match=w.name):
        load_sae(tmp_path / "a")


def test_unreadable_safetensors_with_matching_checksum(tmp_path: Path) -> None:
    import hashlib

    save_sae(_trained_like("topk"), tmp_path / "a")
    w = weights_path(tmp_path / "a")
    w.write_bytes(b"not a safetensors file at all")
    cfg = tmp_path / "a" / CONFIG_FILE
    doc = json.loads(cfg.read_text())
    doc["weights_sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
    doc["config_sha256"] = config_digest(doc)
    cfg.write_text(json.dumps(doc))
    with pytest.raises(SAEFileError, match="cannot read safetensors"):
        load_sae(tmp_path / "a")


def test_missing_weights(tmp_path: Path) -> None:
    save_sae(_trained_like("topk"), tmp_path / "a")
    (weights_path(tmp_path / "a")).unlink()
    with pytest.raises(SAEFileError, match="not found"):
        load_sae(tmp_path / "a")


def test_missing_config(tmp_path: Path) -> None:
    save_sae(_trained_like("topk"), tmp_path / "a")
    (tmp_path / "a" / CONFIG_FILE).unlink()
    with pytest.raises(SAEFileError, match=CONFIG_FILE):
        load_sae(tmp_path / "a")
    with pytest.raises(SAEFileError, match="not found"):
        load_sae(tmp_path / "does_not_exist")


def test_invalid_json(tmp_path: Path) -> None:
    save_sae(_trained_like("topk"), tmp_path / "a")
    (tmp_path / "a" / CONFIG_FILE).write_text('{"format": "softsae_lib.sae", ')
    with pytest.raises(SAEFileError, match="not valid JSON"):
        load_sae(tmp_path / "a")


def _edit_config(folder: Path, fn) -> None:
    path = folder / CONFIG_FILE
    doc = json.loads(path.read_text())
    fn(doc)
    doc["config_sha256"] = config_digest(doc)  # re-sealed: these tests check what lies past the checksum
    path.write_text(json.dumps(doc))


def test_wrong_format_and_version(tmp_path: Path) -> None:
    save_sae(_trained_like("topk"), tmp_path / "a")
    _edit_config(tmp_path / "a", lambda d: d.update(format="something_else"))
    with pytest.raises(SAEFileError, match="not a softsae_lib SAE config"):
        load_sae(tmp_path / "a")
    save_sae(_trained_like("topk"), tmp_path / "b")
    _edit_config(tmp_path / "b", lambda d: d.update(format_version=99))
    with pytest.raises(SAEFileError, match="format_version 99"):
        load_sae(tmp_path / "b")


def test_unknown_arch(tmp_path: Path) -> None:
    save_sae(_trained_like("topk"), tmp_path / "a")
    _edit_config(tmp_path / "a", lambda d: d.update(arch="gated"))
    with pytest.raises(SAEFileError, match="unknown arch 'gated'"):
        load_sae(tmp_path / "a")


def test_unknown_config_field(tmp_path: Path) -> None:
    save_sae(_trained_like("topk"), tmp_path / "a")
    _edit_config(tmp_path / "a", lambda d: d["config"].update(temperature=0.5))
    with pytest.raises(SAEFileError, match="unknown field.*temperature"):
        load_sae(tmp_path / "a")


def test_invalid_config_value(tmp_path: Path) -> None:
    save_sae(_trained_like("topk"), tmp_path / "a")
    _edit_config(tmp_path / "a", lambda d: d["config"].update(k=10_000))
    with pytest.raises(SAEFileError, match="invalid config"):
        load_sae(tmp_path / "a")


def test_weights_of_another_shape(tmp_path: Path) -> None:
    """d=8 weights next to a d=16 config whose checksum matches them: a shape error, not a crash."""
    save_sae(_trained_like("soft", d=16), tmp_path / "big")
    save_sae(_trained_like("soft", d=8), tmp_path / "small")
    shutil.copyfile(weights_path(tmp_path / "small"), weights_path(tmp_path / "big"))
    small_sha = read_sae_config(tmp_path / "small")["weights_sha256"]
    _edit_config(tmp_path / "big", lambda d: d.update(weights_sha256=small_sha))
    with pytest.raises(SAEFileError, match="shape mismatches") as info:
        load_sae(tmp_path / "big")
    msg = str(info.value)
    assert weights_path(tmp_path / "big").name in msg and "W_enc" in msg
    assert "(8, 24)" in msg and "(16, 24)" in msg


def test_weights_of_another_arch(tmp_path: Path) -> None:
    """TopK weights under a SoftSAE config (checksum patched): missing k-estimator tensors named."""
    save_sae(_trained_like("soft"), tmp_path / "soft")
    save_sae(_trained_like("topk"), tmp_path / "topk")
    shutil.copyfile(weights_path(tmp_path / "topk"), weights_path(tmp_path / "soft"))
    sha = read_sae_config(tmp_path / "topk")["weights_sha256"]
    _edit_config(tmp_path / "soft", lambda d: d.update(weights_sha256=sha))
    with pytest.raises(SAEFileError, match="missing.*k_est_W1"):
        load_sae(tmp_path / "soft")


def test_weights_from_another_save_detected(tmp_path: Path) -> None:
    save_sae(_trained_like("topk"), tmp_path / "a")
    m = make_sae("topk", d_model=D, dict_size=F, k=K, seed=99)
    save_sae(m, tmp_path / "b")
    shutil.copyfile(weights_path(tmp_path / "b"), weights_path(tmp_path / "a"))
    with pytest.raises(SAEFileError, match="checksum"):
        load_sae(tmp_path / "a")


def test_atomic_path_failure_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
