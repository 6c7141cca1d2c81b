"""Vision arm: image readers, the project's ViT (training pieces, export/load), capture, proxies."""

from __future__ import annotations

import io
import tarfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from softsae_lib.activations.cache import CacheMismatchError
from softsae_lib.vision import capture as capture_mod
from softsae_lib.vision.capture import (
    VisionEncoder,
    capture_images,
    embed_batch,
    load_vision_encoder,
    random_vision_encoder,
)
from softsae_lib.vision.export import export_vit
from softsae_lib.vision.images import (
    CIFAR10_CLASSES,
    ImageSet,
    load_cifar10,
    load_image_folder,
)
from softsae_lib.vision.proxies import (
    compressed_size,
    edge_density,
    gradient_magnitude,
    mean_gradient,
    predictive_entropy,
)
from softsae_lib.vision.train_vit import ViTTrainConfig, augment, lr_at, make_vit, train_vit

pytestmark = pytest.mark.usefixtures("single_thread")


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _images(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_cifar_reader_decodes_sorts_and_caches(tmp_path):
    imgs = _images(4)
    tar = _tar(tmp_path / "c.tar.gz", {"train/cat/0007.png": _png(imgs[0]),
                                       "train/airplane/0003.png": _png(imgs[1]),
                                       "train/cat/0002.png": _png(imgs[2]),
                                       "test/truck/0000.png": _png(imgs[3])})
    train = load_cifar10("train", tar, cache_dir=tmp_path / "cache")
    # sorted by (class index, file name): airplane/0003, cat/0002, cat/0007
    assert train.labels.tolist() == [0, 3, 3]
    assert train.image_ids.tolist() == [3, 2, 7]
    np.testing.assert_array_equal(train.images, imgs[[1, 2, 0]])
    test = load_cifar10("test", tar, cache_dir=tmp_path / "cache")
    assert test.labels.tolist() == [CIFAR10_CLASSES.index("truck")]
    assert (tmp_path / "cache" / "done.json").is_file()
    # the cache is read, not the tarball: a now-unreadable tar with the same path is not decoded again
    again = load_cifar10("train", tar, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.images, train.images)
    with pytest.raises(ValueError, match="no split 'val'"):
        load_cifar10("val", tar, cache_dir=tmp_path / "cache")


def test_cifar_reader_names_the_bad_member(tmp_path):
    tar = _tar(tmp_path / "bad.tar.gz", {"train/cat/0001.png": _png(_images(1)[0]),
                                         "train/dog/0002.jpg": b"not an image"})
    with pytest.raises(ValueError, match="train/dog/0002.jpg"):
        load_cifar10("train", tar, cache_dir=tmp_path / "c1")
    tar2 = _tar(tmp_path / "cls.tar.gz", {"train/unicorn/0001.png": _png(_images(1)[0])})
    with pytest.raises(ValueError, match="unknown CIFAR-10 class 'unicorn'"):
        load_cifar10("train", tar2, cache_dir=tmp_path / "c2")
    (tmp_path / "trunc.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ValueError, match="trunc.tar.gz"):
        load_cifar10("train", tmp_path / "trunc.tar.gz", cache_dir=tmp_path / "c3")


def test_real_cifar10_test_split():  # the tarball ships in data/: never skipped
    test = load_cifar10("test")
    assert test.images.shape == (10000, 32, 32, 3)
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert 0.3 < test.images.mean() / 255 < 0.6  # natural images, not blank decodes


def test_image_folder_reader(tmp_path):
    imgs = _images(3)
    for i, cls in enumerate(["b_cls", "a_cls", "b_cls"]):
        (tmp_path / "f" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(imgs[i]).save(tmp_path / "f" / cls / f"{i}.png")
    s = load_image_folder(tmp_path / "f")
    assert s.class_names == ("a_cls", "b_cls") and s.labels.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(s.images[0], imgs[1])
    Image.fromarray(_images(1, size=40)[0]).save(tmp_path / "f" / "b_cls" / "9.png")
    with pytest.raises(ValueError, match="9.png"):
        load_image_folder(tmp_path / "f")
    assert load_image_folder(tmp_path / "f", size=16).images.shape == (4, 16, 16, 3)


def test_augment_crops_a_shifted_window_and_schedule():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) + 1
    out = augment(x, pad=2, gen=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for b in range(2):  # each output is a window of the zero-padded image, possibly mirrored
        padded = torch.nn.functional.pad(x[b], (2, 2, 2, 2))
        windows = [padded[:, i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], w) or torch.equal(out[b], w.flip(-1)) for w in windows)
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.0)


def _tiny_cfg(**kw) -> ViTTrainConfig:
    return ViTTrainConfig(**{**dict(width=16, depth=1, heads=2, patch=8, epochs=2, batch_size=16,
                                    checkpoint_minutes=1e9), **kw})


def _tiny_set(n: int, seed: int) -> ImageSet:
    return ImageSet(_images(n, seed), np.arange(n) % 10, np.arange(n), CIFAR10_CLASSES, f"random{seed}")


def test_train_resume_and_export_round_trip(tmp_path):
    train, test = _tiny_set(48, 1), _tiny_set(20, 2)
    cfg = _tiny_cfg()
    a = train_vit(cfg, tmp_path / "a", tmp_path / "ck_a", train, test, log=lambda *_: None)
    first = train_vit(cfg, tmp_path / "b", tmp_path / "ck_b", train, test, max_steps=4, log=lambda *_: None)
    assert first["steps"] == 4
    resumed = train_vit(cfg, tmp_path / "b", tmp_path / "ck_b", train, test, log=lambda *_: None)
    assert resumed["steps"] == a["steps"] == 6  # 2 epochs of 48 // 16 steps
    assert resumed["test_accuracy"] == pytest.approx(a["test_accuracy"])  # seeded order/augmentation
    with pytest.raises(ValueError, match="different config"):
        train_vit(_tiny_cfg(lr=1e-4), tmp_path / "b", tmp_path / "ck_b", train, test, log=lambda *_: None)
    enc = load_vision_encoder(tmp_path / "b")
    assert (tmp_path / "b" / "README.md").read_text().count("Test accuracy") == 1
    assert enc.has_classifier and enc.config.image_size == 32
    ref = make_vit(cfg)
    ref.load_state_dict({k: v.float() for k, v in enc.model.state_dict().items()})
    # the exported processor standardises with the CIFAR statistics, as training did
    from softsae_lib.vision.train_vit import normalize
    with torch.no_grad():
        expected = ref(pixel_values=normalize(torch.from_numpy(test.images[:5]))).logits
    got = embed_batch(enc, test.images[:5])["logits"]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert all(p.dtype == torch.float32 for p in enc.model.parameters())


def _tiny_vit_encoder() -> VisionEncoder:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=16,
                                                num_hidden_layers=2, num_attention_heads=2,
                                                intermediate_size=32, num_labels=3))
    return VisionEncoder(model.eval(), ViTImageProcessor(size={"height": 32, "width": 32}), "tiny-vit")


def _tiny_clip_encoder() -> VisionEncoder:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=32))
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return VisionEncoder(model.eval(), proc, "tiny-clip")


def test_capture_vit_matches_direct_forward_and_resumes(tmp_path, monkeypatch):
    enc, images = _tiny_vit_encoder(), _tiny_set(10, 3)
    full = capture_images(enc, images, tmp_path / "full", layer=1, batch_size=3, patch_tokens=True,
                          shard_rows=2, log=lambda *_: None)
    px = enc.processor(images=list(images.images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hs = enc.model(pixel_values=px, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(full.cls.vectors(), hs[1][:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(full.patches.vectors().reshape(10, 16, 16), hs[1][:, 1:].numpy(), atol=1e-5)
    assert full.cls.column("image_id").tolist() == images.image_ids.tolist()
    assert full.patches.column("patch")[:17].tolist() == list(range(16)) + [0]
    assert full.logits.vectors().shape == (10, 3)

    calls = {"n": 0}
    real = capture_mod.embed_batch

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # the probe + two batches succeed, then the "crash"
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(capture_mod, "embed_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        capture_images(enc, images, tmp_path / "part", layer=1, batch_size=3, patch_tokens=True, shard_rows=2)
    monkeypatch.setattr(capture_mod, "embed_batch", real)
    logs = []
    resumed = capture_images(enc, images, tmp_path / "part", layer=1, batch_size=3, patch_tokens=True,
                             shard_rows=2, log=logs.append)
    assert any("resuming capture at image 6" in m for m in logs)
    for part in ("cls", "patches", "logits"):
        np.testing.assert_array_equal(getattr(resumed, part).vectors(), getattr(full, part).vectors())
        np.testing.assert_array_equal(getattr(resumed, part).column("label"),
                                      getattr(full, part).column("label"))
    with pytest.raises(CacheMismatchError, match="layer"):
        capture_images(enc, images, tmp_path / "part", layer=2, batch_size=3, patch_tokens=True, shard_rows=2)


def test_capture_clip_pooled_is_post_layernorm_cls(tmp_path):
    enc, images = _tiny_clip_encoder(), _tiny_set(5, 4)
    res = capture_images(enc, images, tmp_path / "clip", batch_size=2, log=lambda *_: None)
    assert res.logits is None and res.patches is None
    px = enc.processor(images=list(images.images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = enc.model(pixel_values=px)
        direct = enc.model.post_layernorm(out.last_hidden_state[:, 0])
    np.testing.assert_allclose(res.cls.vectors(), direct.numpy(), atol=1e-5)
    assert res.cls.meta["encoder"] == "tiny-clip" and res.cls.meta["layer"] == "pooled"


def test_load_vision_encoder_errors_and_offline_fallback(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_vision_encoder(tmp_path / "nope")
    import transformers

    real = transformers.AutoConfig.from_pretrained

    def no_hub(path, *a, **k):  # what from_pretrained raises without a network
        if not Path(path).is_dir():
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(path, *a, **k)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_hub)
    enc = random_vision_encoder("vit", seed=1)
    record = {"config": asdict(_tiny_cfg()), "history": [], "test_accuracy": 0.5, "steps": 0,
              "epochs_done": 0.0, "planned_epochs": 0, "train_images": 0, "test_images": 0, "minutes": 0.0}
    export_vit(enc.model, tmp_path / "offline", record, (0.5,) * 3, (0.25,) * 3)
    with pytest.warns(UserWarning, match="offline encoder"):
        got = load_vision_encoder("someone/vit-on-the-hub", fallback=str(tmp_path / "offline"))
    assert got.name == "offline" and got.width == enc.width
    with pytest.raises(FileNotFoundError, match="someone/vit"):
        load_vision_encoder("someone/vit-on-the-hub", fallback=None)


def test_proxies_on_hand_cases():
    flat = np.full((1, 8, 8, 3), 128, np.uint8)
    step = np.zeros((1, 8, 8, 3), np.uint8)
    step[:, :, 4:] = 255  # vertical black -> white edge between columns 3 and 4
    g = gradient_magnitude(step)[0]
    assert g.shape == (6, 6)
    np.testing.assert_allclose(g[:, [2, 3]], 4.0 * (0.299 + 0.587 + 0.114))  # Sobel gain 4 on both sides
    assert np.all(g[:, [0, 1, 4, 5]] == 0)
    assert edge_density(step)[0] == pytest.approx(2 / 6)
    assert edge_density(flat)[0] == 0 and mean_gradient(flat)[0] == 0
    noise = _images(1, 5, size=8)
    assert compressed_size(flat)[0] < compressed_size(step)[0] < compressed_size(noise)[0]
    assert compressed_size(flat, "JPEG")[0] < compressed_size(noise, "JPEG")[0]
    ent = predictive_entropy(np.array([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(ent, [np.log(4), 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="uint8"):
        edge_density(flat.astype(np.float32))


def test_hf_images_reads_columns_and_class_names(monkeypatch):
    """The online path, against a stand-in for ``datasets`` (the hub is unreachable in tests)."""
    import sys
    import types

    imgs = _images(3, 6)

    class FakeDataset:
        column_names = ["img", "label"]
        features = {"label": types.SimpleNamespace(names=["cat", "dog"])}

        def __init__(self, rows):
            self.rows = rows

        def __len__(self):
            return len(self.rows)

        def select(self, idx):
            return FakeDataset([self.rows[i] for i in idx])

        def __iter__(self):
            return iter(self.rows)

        def __getitem__(self, col):
            return [r[col] for r in self.rows]

    rows = [{"img": Image.fromarray(im), "label": i % 2} for i, im in enumerate(imgs)]
    fake = types.SimpleNamespace(load_dataset=lambda name, split: FakeDataset(rows))
    monkeypatch.setitem(sys.modules, "datasets", fake)
    from softsae_lib.vision.images import load_hf_images

    s = load_hf_images("uoft-cs/cifar10", "test", limit=2)
    assert s.class_names == ("cat", "dog") and s.labels.tolist() == [0, 1]
    assert s.source == "hf:uoft-cs/cifar10:test"
    np.testing.assert_array_equal(s.images, imgs[:2])
    assert load_hf_images("x", size=8).images.shape == (3, 8, 8, 3)


def test_replan_fits_the_schedule_to_the_pace_and_budget():
    from softsae_lib.vision.train_vit import _replan

    cfg = ViTTrainConfig(minutes=100.0)
    hist = [{"epoch": 1.0, "minutes": 10.0}, {"epoch": 2.0, "minutes": 20.0}]
    slow = {"step": 20, "epochs": 14, "elapsed": 20 * 60.0, "history": hist}
    _replan(slow, cfg, steps_per_epoch=10, log=lambda *_: None)
    assert slow["epochs"] == 2 + int(80 * 0.97 / 10)  # 10 min/epoch, 80 min left -> 7 more
    fast = {"step": 20, "epochs": 4, "elapsed": 20 * 60.0,
            "history": hist[:1] + [{"epoch": 2.0, "minutes": 15.0}]}
    _replan(fast, cfg, steps_per_epoch=10, log=lambda *_: None)
    assert fast["epochs"] == 2 + int((100 - 20) * 0.97 / 5)  # the pace doubled: the schedule grows
