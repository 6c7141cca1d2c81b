"""Bad-input, crafted-file and kill tests for what the project reads and writes (issue 14):
checkpoints (no code runs from a file), paths kept inside their folder, all-or-nothing saves,
stale temporaries, permissions, checksummed configs and activation-cache manifests."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from softsae_lib.activations.cache import ActivationCache, CacheCorruptError, CacheError, CacheWriter
from softsae_lib.atomic import atomic_path, atomic_write_text, sha256_file
from softsae_lib.io import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    SAEFileError,
    config_digest,
    load_sae,
    read_sae_config,
    save_sae,
    weights_path,
)
from softsae_lib.saes import make_sae
from softsae_lib.training import TrainConfig, train_sae
from softsae_lib.training.checkpoint import CHECKPOINT_FILE, CheckpointError

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).resolve().parents[1]
D = 8


def _model(seed: int = 0, k: int = 2):
    return make_sae("topk", d_model=D, dict_size=16, k=k, seed=seed)


def _data(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def _cfg(tmp: Path, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(steps=4, batch_size=16, warmup_steps=1, checkpoint_dir=str(tmp),
                                 checkpoint_every=2, progress=False), **kw})


class _Evil:
    """Unpickling this calls ``open(marker, "w")``: the file appearing means code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _crafted_checkpoint(folder: Path, marker: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 1, "payload": _Evil(marker)}, folder / CHECKPOINT_FILE)
    return folder / CHECKPOINT_FILE


# ------------------------------------------------------------------------------------------ security


def test_crafted_checkpoint_runs_no_code_on_resume(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _crafted_checkpoint(tmp_path / "run", marker)
    with pytest.raises(CheckpointError, match=CHECKPOINT_FILE) as info:
        train_sae(_model(), _data(), _cfg(tmp_path / "run", resume=True))
    assert "tensors and plain values" in str(info.value)
    assert not marker.exists()


def test_crafted_checkpoint_runs_no_code_in_cli_resume(tmp_path: Path, capsys) -> None:
    from softsae_lib.__main__ import main

    marker = tmp_path / "pwned"
    _crafted_checkpoint(tmp_path / "out", marker)
    np.save(tmp_path / "x.npy", _data().numpy())
    rc = main(["train", "--data", str(tmp_path / "x.npy"), "--arch", "topk", "--dict-size", "16",
                  "--k", "2", "--steps", "2", "--batch-size", "16", "--out", str(tmp_path / "out"),
                  "--resume"])
    assert rc == 2 and not marker.exists()
    assert CHECKPOINT_FILE in capsys.readouterr().err


def _image_set(n: int, seed: int):
    from softsae_lib.vision.images import CIFAR10_CLASSES, ImageSet

    imgs = np.random.default_rng(seed).integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    return ImageSet(imgs, np.arange(n) % 10, np.arange(n), CIFAR10_CLASSES, f"random{seed}")


def test_crafted_vit_checkpoint_runs_no_code(tmp_path: Path) -> None:
    from softsae_lib.vision.train_vit import ViTTrainConfig, train_vit

    marker = tmp_path / "pwned"
    _crafted_checkpoint(tmp_path / "ck", marker)
    cfg = ViTTrainConfig(width=16, depth=1, heads=2, patch=8, epochs=1, batch_size=16)
    with pytest.raises(ValueError, match="checkpoint.pt.*tensors and plain values"):
        train_vit(cfg, tmp_path / "out", tmp_path / "ck", _image_set(32, 1), _image_set(8, 2),
                  log=lambda *_: None)
    assert not marker.exists()


def test_vit_checkpoint_of_wrong_structure(tmp_path: Path) -> None:
    from softsae_lib.vision.train_vit import _load_checkpoint

    (tmp_path / "a.pt").write_bytes(b"")
    torch.save([1, 2], tmp_path / "b.pt")
    with pytest.raises(ValueError, match="a.pt: cannot be read"):
        _load_checkpoint(tmp_path / "a.pt", "cpu")
    with pytest.raises(ValueError, match="b.pt: not a ViT training checkpoint"):
        _load_checkpoint(tmp_path / "b.pt", "cpu")


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("member", ["/airplane/0001.jpg", "/train/airplane/0001.jpg",
                                    "../train/airplane/0001.jpg", "x/../../train/airplane/0001.jpg"])
def test_cifar_tar_member_outside_folder_refused(tmp_path: Path, member: str) -> None:
    from softsae_lib.vision.images import load_cifar10

    tar = tmp_path / "c.tar"
    data = _jpeg()
    with tarfile.open(tar, "w") as tf:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    before = set(Path("/").iterdir())
    with pytest.raises(ValueError, match=f"c.tar:{member}.*absolute or leaves"):
        load_cifar10("train", tar_path=tar, cache_dir=tmp_path / "cache")
    assert set(Path("/").iterdir()) == before and not Path("/_images.npy").exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def _cache(root: Path, n: int = 12, columns: tuple[str, ...] = ("doc_id",)) -> Path:
    with CacheWriter(root, d=4, meta={"t": 1}, columns=columns, shard_rows=6) as w:
        for half in (0, n // 2):  # two appends: two shards
            w.append(np.ones((n // 2, 4), np.float32), **{c: np.arange(half, half + n // 2) for c in columns})
    return root


def _edit_manifest(root: Path, fn) -> None:
    doc = json.loads((root / "manifest.json").read_text())
    fn(doc)
    (root / "manifest.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("target", ["../outside.npy", "ABS", "sub/shard.npy", "link.npy"])
def test_manifest_shard_outside_folder_refused(tmp_path: Path, target: str) -> None:
    root = _cache(tmp_path / "c")
    outside = tmp_path / "outside.npy"
    np.save(outside, np.ones((6, 4), np.float32))
    (root / "link.npy").symlink_to(outside)
    name = str(outside) if target == "ABS" else target

    def point(doc: dict) -> None:
        doc["shards"][0]["files"]["x"] = {"file": name, "sha256": sha256_file(outside)}

    _edit_manifest(root, point)
    with pytest.raises(CacheCorruptError, match="not a plain .npy file name inside") as info:
        ActivationCache(root)
    assert name in str(info.value) and "manifest.json" in str(info.value)


# ------------------------------------------------------------------------------------------ data loss


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_with_unserialisable_metadata_keeps_old_model(tmp_path: Path) -> None:
    old = _model(seed=1)
    save_sae(old, tmp_path / "m")
    with pytest.raises(TypeError, match="metadata is not JSON-serialisable"):
        save_sae(_model(seed=2), tmp_path / "m", metadata={"bad": object()})
    assert _same(load_sae(tmp_path / "m"), old)
    assert len(list((tmp_path / "m").iterdir())) == 2


def test_save_into_a_file_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(SAEFileError, match="f: exists and is not a folder"):
        save_sae(_model(), tmp_path / "f")


def test_save_failure_after_weights_keeps_old_model(tmp_path: Path, monkeypatch) -> None:
    """A failure between the weights and the config (the old commit order's weak point)."""
    import softsae_lib.io as sio

    old = _model(seed=1)
    save_sae(old, tmp_path / "m")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(sio, "atomic_write_text", boom)
    with pytest.raises(OSError, match="disk full"):
        save_sae(_model(seed=2), tmp_path / "m")
    assert _same(load_sae(tmp_path / "m"), old)


def test_old_format_folder_still_loads_and_is_replaced_cleanly(tmp_path: Path) -> None:
    """A format_version 1 folder (model.safetensors, no config checksum) loads; saving over it
    leaves only the new files."""
    m = _model(seed=3)
    save_sae(m, tmp_path / "m")
    doc = read_sae_config(tmp_path / "m")
    weights_path(tmp_path / "m").rename(tmp_path / "m" / WEIGHTS_FILE)
    for key in ("weights_file", "config_sha256"):
        doc.pop(key)
    doc["format_version"] = 1
    (tmp_path / "m" / CONFIG_FILE).write_text(json.dumps(doc))
    assert _same(load_sae(tmp_path / "m"), m)
    save_sae(_model(seed=4), tmp_path / "m")
    assert not (tmp_path / "m" / WEIGHTS_FILE).exists()
    assert _same(load_sae(tmp_path / "m"), _model(seed=4))


_KILL_SCRIPT = textwrap.dedent('''
    import os, random, signal, sys, time
    import torch
    torch.set_num_threads(1)
    from softsae_lib.io import load_sae, save_sae
    from softsae_lib.saes import make_sae
    folder, kills = sys.argv[1], int(sys.argv[2])
    models = [make_sae("topk", d_model=64, dict_size=512, k=4, seed=s) for s in (0, 1)]
    save_sae(models[0], folder)
    rng = random.Random(0)
    for i in range(kills):
        pid = os.fork()
        if pid == 0:  # the child saves the two models in turn until it is killed
            j = 0
            while True:
                save_sae(models[j % 2], folder, metadata={"i": j})
                j += 1
        time.sleep(rng.uniform(0.02, 0.15))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        got = load_sae(folder)  # raises if the folder was left unloadable
        assert any(torch.equal(got.W_enc, m.W_enc) for m in models), "mixed model"
    print("ok", len(os.listdir(folder)))
''')


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kills_during_repeated_saves_leave_a_loadable_model(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(tmp_path / "m"), "5"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")


# ------------------------------------------------------------------------------------------ hygiene


def test_stale_temporary_of_killed_writer_removed_on_next_write(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    script = ("import sys, time; from softsae_lib.atomic import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n"
              "    tmp.write_bytes(b'x' * 1000); print('writing', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    stale = list(tmp_path.glob(".checkpoint.pt.*.tmp"))
    assert len(stale) == 1  # the kill left it
    (tmp_path / ".other.pt.999999999.abc.tmp").write_text("not ours")  # another target's: kept
    live = tmp_path / f".checkpoint.pt.{os.getpid()}.live.tmp"  # a running writer's: kept
    live.write_text("in progress")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".other.pt.999999999.abc.tmp", live.name, "checkpoint.pt"])


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "f.json", "{}")
        with atomic_path(tmp_path / "g.bin") as tmp:
            tmp.write_bytes(b"1")
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "g.bin").stat().st_mode & 0o777 == mode


# ------------------------------------------------------------------------------------------ config.json


def _reseal(folder: Path, fn) -> None:
    path = folder / CONFIG_FILE
    doc = json.loads(path.read_text())
    fn(doc)
    doc["config_sha256"] = config_digest(doc)
    path.write_text(json.dumps(doc))


def test_config_writes_every_field_and_checksum(tmp_path: Path) -> None:
    import dataclasses

    m = _model(k=4)
    save_sae(m, tmp_path / "m")
    doc = read_sae_config(tmp_path / "m")
    assert set(doc["config"]) == {f.name for f in dataclasses.fields(m.config)}
    assert doc["config"]["k"] == 4 and doc["config_sha256"] == config_digest(doc)


def test_edited_config_fails_its_checksum(tmp_path: Path) -> None:
    save_sae(_model(k=4), tmp_path / "m")
    path = tmp_path / "m" / CONFIG_FILE
    path.write_text(path.read_text().replace('"k": 4', '"k": 3'))
    with pytest.raises(SAEFileError, match="config.json: config_sha256 does not match"):
        load_sae(tmp_path / "m")


def test_missing_config_field_is_not_defaulted(tmp_path: Path) -> None:
    save_sae(_model(k=4), tmp_path / "m")
    _reseal(tmp_path / "m", lambda d: d["config"].pop("k"))
    with pytest.raises(SAEFileError, match=r"config.json: config lacks field\(s\) \['k'\]"):
        load_sae(tmp_path / "m")


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.pop("config"), r"lacks required field\(s\) \['config'\]"),
    (lambda d: d.update(config=None), "field 'config' must be an object"),
    (lambda d: d.update(weights_file="../other.safetensors"), "weights_file '../other.safetensors'"),
    (lambda d: d.pop("weights_sha256"), "weights_sha256"),
])
def test_config_structure_errors_name_the_field(tmp_path: Path, edit, match: str) -> None:
    save_sae(_model(), tmp_path / "m")
    _reseal(tmp_path / "m", edit)
    with pytest.raises(SAEFileError, match=match):
        load_sae(tmp_path / "m")


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("state,match", [
    ([1, 2, 3], "expected a dict of training state, got list"),
    ("drop:optimizer", r"lacks \['optimizer'\]"),
    ("set:step=-1", "field 'step' is -1"),
    ("set:step=x", "field 'step' is a str"),
    ("set:history={}", "field 'history' is a dict"),
    ("set:fvu_interval=[1.5]", r"field 'fvu_interval' is \[1.5\], expected a list of two numbers"),
    ("set:fvu_interval=[1.5, \"x\"]", "field 'fvu_interval' is .*expected a list of two numbers"),
])
def test_malformed_checkpoint_named(tmp_path: Path, state, match: str) -> None:
    cfg = _cfg(tmp_path)
    train_sae(_model(), _data(), cfg)
    path = tmp_path / CHECKPOINT_FILE
    if isinstance(state, str):
        saved = torch.load(path, weights_only=True)
        op, _, arg = state.partition(":")
        if op == "drop":
            saved.pop(arg)
        else:
            key, _, value = arg.partition("=")
            saved[key] = json.loads(value) if value[0] in "-0123456789{[" else value
        state = saved
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=match) as info:
        train_sae(_model(), _data(), _cfg(tmp_path, resume=True))
    assert CHECKPOINT_FILE in str(info.value)


def _interrupted_run(tmp: Path, data) -> None:
    """Six steps, checkpointed every 2, interrupted after step 2."""
    def stop(step: int, terms: dict) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sae(_model(), data, _cfg(tmp, steps=6), on_step=stop)


def test_resume_with_different_data_refused(tmp_path: Path) -> None:
    _interrupted_run(tmp_path, _data(seed=0))
    with pytest.raises(CheckpointError, match="training data differs.*sample_sha256"):
        train_sae(_model(), _data(seed=1), _cfg(tmp_path, steps=6, resume=True))
    with pytest.raises(CheckpointError, match="training data differs.*shape"):
        train_sae(_model(), _data(n=80, seed=0), _cfg(tmp_path, steps=6, resume=True))
    with pytest.raises(CheckpointError, match="training data differs.*kind"):
        train_sae(_model(), list(_data(seed=0).split(16)), _cfg(tmp_path, steps=6, resume=True))


def test_resume_with_same_data_in_another_container_accepted(tmp_path: Path) -> None:
    _interrupted_run(tmp_path, _data())
    res = train_sae(_model(), _data().numpy(), _cfg(tmp_path, steps=6, resume=True))
    assert res.steps_run == 4


def test_checkpoint_dir_that_is_a_file_fails_before_training(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    steps = []
    with pytest.raises(CheckpointError, match="checkpoint_dir .*f is a file"):
        train_sae(_model(), _data(), _cfg(tmp_path / "f"), on_step=lambda s, t: steps.append(s))
    with pytest.raises(CheckpointError, match="is a file"):
        train_sae(_model(), _data(), _cfg(tmp_path / "f" / "sub"), on_step=lambda s, t: steps.append(s))
    assert steps == []


# ------------------------------------------------------------------------------------------ caches


@pytest.mark.parametrize("content,match", [
    (b"\xff\xfe\x00bad", "not valid UTF-8 JSON"),
    (b"[1, 2]", "not an activation cache"),
    (b'{"format": "softsae_lib.activation_cache"', "not valid UTF-8 JSON"),
])
def test_unreadable_manifest_named(tmp_path: Path, content: bytes, match: str) -> None:
    root = _cache(tmp_path / "c")
    (root / "manifest.json").write_bytes(content)
    with pytest.raises(CacheError, match=match) as info:
        ActivationCache(root)
    assert "manifest.json" in str(info.value)


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.pop("d"), "lacks the required field 'd'"),
    (lambda d: d.pop("shards"), "lacks the required field 'shards'"),
    (lambda d: d["shards"][1]["files"]["x"].pop("sha256"), r"shards\[1\].files.x.sha256"),
    (lambda d: d.update(n_rows=20), "n_rows is 20 but the shards hold 12 rows"),
    (lambda d: d.update(dtype="int8"), "field 'dtype' is 'int8'"),
    (lambda d: d.update(d="4"), "field 'd' must be an int"),
    (lambda d: d["shards"][0]["files"].pop("doc_id"), r"shards\[0\].files must have exactly"),
    (lambda d: d["shards"].append("x"), r"shards\[2\] must be an object"),
])
def test_malformed_manifest_named(tmp_path: Path, edit, match: str) -> None:
    root = _cache(tmp_path / "c")
    _edit_manifest(root, edit)
    with pytest.raises(CacheCorruptError, match=match) as info:
        ActivationCache(root)
    assert "manifest.json" in str(info.value)


def test_shard_dtype_differing_from_manifest_refused(tmp_path: Path) -> None:
    root = _cache(tmp_path / "c")
    f = root / "shard-00000.x.npy"
    np.save(f, np.ones((6, 4), np.float16))  # right shape, wrong dtype

    def fix(doc: dict) -> None:
        doc["shards"][0]["files"]["x"]["sha256"] = sha256_file(f)

    _edit_manifest(root, fix)
    with pytest.raises(CacheCorruptError, match="shard-00000.x.npy: dtype float16, manifest says float32"):
        ActivationCache(root).shard(0)


@pytest.mark.parametrize("col,ok", [(np.array([1.5, 2.0]), False), (np.array([1.0, np.nan]), False),
                                    (np.array(["a", "b"]), False), (np.array([1.0, 2.0]), True),
                                    (np.array([1, 2], np.int32), True)])
def test_int_column_refuses_fractions(tmp_path: Path, col: np.ndarray, ok: bool) -> None:
    w = CacheWriter(tmp_path / "c", d=4, meta={}, columns=("doc_id",), shard_rows=2)
    if ok:
        w.append(np.ones((2, 4), np.float32), doc_id=col)
        w.finish()
        assert ActivationCache(tmp_path / "c").column("doc_id").tolist() == [1, 2]
    else:
        with pytest.raises(ValueError, match="column 'doc_id' must hold integers; row [01]"):
            w.append(np.ones((2, 4), np.float32), doc_id=col)
