"""Image embeddings from Hugging Face vision transformers into the shared activation cache.

Supported encoders: ``ViTModel``, ``ViTForImageClassification`` (the project's offline CIFAR-10 ViT and
``google/vit-base-patch16-224``) and ``CLIPVisionModel`` (CLIP ViT-B/16, the SoftSAE paper's encoder).
Images go through the model's own image processor. The stored vector is the CLS token at a chosen
layer (``hidden_states[layer][:, 0]``) or the ``"pooled"`` embedding (final LayerNorm of the CLS token:
what the classifier head / CLIP projection reads). Patch tokens can be captured into a second cache.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from softsae_lib.activations.cache import ActivationCache, CacheWriter, is_complete
from softsae_lib.resources import models_dir
from softsae_lib.vision.images import ImageSet

OFFLINE_DEFAULT = "cifar10-vit"  # the project's own ViT in data/models/
ONLINE_DEFAULT = "google/vit-base-patch16-224"  # ViT-B/16 from the hub
CLIP_B16 = "openai/clip-vit-base-patch16"  # the paper's encoder family (CLIP ViT-B/16)
Layer = int | str  # an index into hidden_states (0 = patch embeddings, -1 = last block) or "pooled"


@dataclass
class VisionEncoder:
    """A loaded encoder: the model, its image processor and what to call it in figures."""

    model: torch.nn.Module  # ViTModel, ViTForImageClassification or CLIPVisionModel
    processor: object  # the model's own image processor (callable: images -> pixel_values)
    name: str  # hub id or folder name, printed on every figure
    device: str = "cpu"

    @property
    def config(self):
        return self.model.config

    @property
    def n_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def width(self) -> int:
        return int(self.config.hidden_size)

    @property
    def has_classifier(self) -> bool:
        return hasattr(self.model, "classifier")

    def fingerprint(self) -> str:
        """Short hash of the weights, stored in cache metadata so a changed model is re-captured."""
        h = hashlib.sha256()
        for name, p in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
            h.update(str(tuple(p.shape)).encode())
        return h.hexdigest()[:16]


def resolve_encoder_path(name_or_path: str | Path) -> str:
    """A local folder (as given, or under ``data/models/``) if one exists, else the hub id unchanged."""
    p = Path(name_or_path)
    if p.is_dir():
        return str(p)
    local = models_dir() / str(name_or_path)
    if local.is_dir():
        return str(local)
    if p.is_absolute() or str(name_or_path).startswith("."):
        raise FileNotFoundError(f"{p}: encoder folder not found")
    return str(name_or_path)


def load_vision_encoder(name_or_path: str | Path = ONLINE_DEFAULT, device: str = "cpu",
                        fallback: str | None = OFFLINE_DEFAULT) -> VisionEncoder:
    """Load a ViT/CLIP vision encoder and its image processor (local folder, ``data/models/<name>``, or hub).

    The default is ViT-B/16 from the hub; when a hub model cannot be fetched (no network) the
    project's offline ``fallback`` is loaded instead, with a warning. A folder of
    ``ViTForImageClassification`` keeps its head (for classifier entropy); a full CLIP checkpoint is
    loaded as ``CLIPVisionModel`` (the vision tower only).
    """
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        CLIPVisionModel,
        ViTForImageClassification,
        ViTModel,
    )

    path = resolve_encoder_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as err:
        if fallback is not None and not Path(path).is_dir() and fallback != str(name_or_path):
            warnings.warn(f"{name_or_path}: cannot be loaded from the hub ({str(err).splitlines()[0]}); "
                          f"using the offline encoder {fallback!r} instead", stacklevel=2)
            return load_vision_encoder(fallback, device, fallback=None)
        raise FileNotFoundError(f"{name_or_path}: no local encoder in {models_dir()} and the hub cannot be "
                                f"reached or has no such model ({err})") from err
    if config.model_type == "vit":
        if "ViTForImageClassification" in (config.architectures or []):
            model = ViTForImageClassification.from_pretrained(path, dtype=torch.float32)
        else:
            model = ViTModel.from_pretrained(path, dtype=torch.float32, add_pooling_layer=False)
    elif config.model_type in ("clip", "clip_vision_model"):
        model = CLIPVisionModel.from_pretrained(path, dtype=torch.float32)
    else:
        raise ValueError(f"{name_or_path}: model type {config.model_type!r} is not a supported vision "
                         f"encoder (vit, clip)")
    processor = AutoImageProcessor.from_pretrained(path)
    return VisionEncoder(model.to(device).eval(), processor, Path(str(name_or_path)).name
                         if Path(path).is_dir() else str(name_or_path), device)


def _forward_parts(encoder: VisionEncoder, pixel_values: torch.Tensor):
    """(hidden_states tuple, pooled (B, d), logits (B, C) or None) for one batch."""
    model = encoder.model
    out = model(pixel_values=pixel_values, output_hidden_states=True)
    hs = out.hidden_states
    if hasattr(model, "vit"):  # ViTForImageClassification: the head reads layernorm(last)[:, 0]
        pooled = model.vit.layernorm(hs[-1])[:, 0]
        return hs, pooled, out.logits
    if model.config.model_type == "clip_vision_model":  # pooler_output = post_layernorm(last[:, 0])
        return hs, out.pooler_output, None
    return hs, out.last_hidden_state[:, 0], None  # ViTModel: last_hidden_state is already layer-normed


@torch.no_grad()
def embed_batch(encoder: VisionEncoder, images: np.ndarray, layer: Layer = "pooled",
                patch_tokens: bool = False) -> dict[str, torch.Tensor]:
    """Embed ``images: (B, H, W, 3)`` uint8 RGB.

    Returns ``cls: (B, d)`` (CLS at ``layer`` or the pooled embedding), ``patches: (B, P, d)`` when
    ``patch_tokens`` (tokens 1..P of the same layer; of the last layer for "pooled"), and
    ``logits: (B, C)`` when the encoder has a classifier head.
    """
    pixel_values = encoder.processor(images=list(images), return_tensors="pt")["pixel_values"]
    hs, pooled, logits = _forward_parts(encoder, pixel_values.to(encoder.device, torch.float32))
    if layer == "pooled":
        cls, tokens = pooled, hs[-1]
    elif isinstance(layer, int) and -len(hs) <= layer < len(hs):
        cls, tokens = hs[layer][:, 0], hs[layer]
    else:
        raise ValueError(f"layer must be 'pooled' or an index into {len(hs)} hidden states, got {layer!r}")
    out = {"cls": cls.float().cpu()}
    if patch_tokens:
        out["patches"] = tokens[:, 1:].float().cpu()
    if logits is not None:
        out["logits"] = logits.float().cpu()
    return out


@dataclass
class CaptureResult:
    """Caches written by :func:`capture_images` (``patches``/``logits`` None when not captured)."""

    cls: ActivationCache
    patches: ActivationCache | None
    logits: ActivationCache | None


def capture_images(encoder: VisionEncoder, images: ImageSet, root: str | Path, layer: Layer = "pooled",
                   batch_size: int = 64, patch_tokens: bool = False, dtype: str = "float32",
                   shard_rows: int = 8192, log=print) -> CaptureResult:
    """Embed every image of ``images`` into caches under ``root`` (``cls/``, ``patches/``, ``logits/``).

    Rows keep the ImageSet's order with int columns ``image_id`` and ``label`` (patch rows add
    ``patch``). The metadata names encoder, weights fingerprint, layer and image source, so a cache
    made by something else is refused; a finished cache is reused, an interrupted one resumes from the
    last shard the ``cls`` cache recorded (the other caches are cut at the same image).
    """
    root = Path(root)
    id_hash = hashlib.sha256(np.ascontiguousarray(images.image_ids).tobytes()
                             + np.ascontiguousarray(images.labels).tobytes()).hexdigest()[:16]
    meta = {"encoder": encoder.name, "weights": encoder.fingerprint(), "layer": layer,
            "source": images.source, "n_images": len(images), "ids_sha256": id_hash,
            "class_names": list(images.class_names)}
    want_logits = encoder.has_classifier
    parts = {"cls": True, "patches": patch_tokens, "logits": want_logits}
    if all(is_complete(root / k, meta) for k, on in parts.items() if on):
        return _result(root, patch_tokens, want_logits)
    with torch.no_grad():
        probe = embed_batch(encoder, images.images[:1], layer, patch_tokens)
    writers = {"cls": CacheWriter(root / "cls", probe["cls"].shape[1], meta, ("image_id", "label"), dtype,
                                  shard_rows)}
    if patch_tokens:
        n_patch = probe["patches"].shape[1]
        writers["patches"] = CacheWriter(root / "patches", probe["patches"].shape[2], meta,
                                         ("image_id", "label", "patch"), dtype, shard_rows * n_patch)
    if want_logits:
        writers["logits"] = CacheWriter(root / "logits", probe["logits"].shape[1], meta,
                                        ("image_id", "label"), "float32", shard_rows)
    start = int(writers["cls"].progress.get("next_image", 0))
    for name, w in writers.items():
        if int(w.progress.get("next_image", 0)) != start or (w.complete != writers["cls"].complete):
            raise RuntimeError(f"{root / name}: out of step with {root / 'cls'} ({w.progress} vs "
                               f"{writers['cls'].progress}); delete {root} and capture again")
    if start:
        log(f"resuming capture at image {start} of {len(images)}")
    for i in range(start, len(images), batch_size):
        j = min(i + batch_size, len(images))
        emb = embed_batch(encoder, images.images[i:j], layer, patch_tokens)
        ids, labels = images.image_ids[i:j], images.labels[i:j]
        # every writer cuts a shard at the same image (patch shards hold n_patch rows per image)
        progress = {"next_image": j}
        writers["cls"].append(emb["cls"], progress, image_id=ids, label=labels)
        if patch_tokens:
            b, p, d = emb["patches"].shape
            writers["patches"].append(emb["patches"].reshape(b * p, d), progress, image_id=np.repeat(ids, p),
                                      label=np.repeat(labels, p), patch=np.tile(np.arange(p), b))
        if want_logits:
            writers["logits"].append(emb["logits"], progress, image_id=ids, label=labels)
    for w in writers.values():
        if not w.complete:
            w.finish()
    log(f"captured {len(images)} images from {encoder.name} ({layer}) into {root}")
    return _result(root, patch_tokens, want_logits)


def _result(root: Path, patches: bool, logits: bool) -> CaptureResult:
    return CaptureResult(ActivationCache(root / "cls"),
                         ActivationCache(root / "patches") if patches else None,
                         ActivationCache(root / "logits") if logits else None)


def describe(encoder: VisionEncoder) -> str:
    """One line for figure titles: name, architecture and size."""
    c = encoder.config
    size = getattr(c, "image_size", "?")
    return (f"{encoder.name} ({type(encoder.model).__name__}, {c.num_hidden_layers} layers, width "
            f"{c.hidden_size}, patch {c.patch_size}, {size}px)")


def encoder_card(encoder_dir: str | Path) -> dict:
    """The training record (``training.json``) of a project-trained encoder, or {} for hub models."""
    path = Path(resolve_encoder_path(encoder_dir)) / "training.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def random_vision_encoder(kind: str = "vit", width: int = 32, depth: int = 2, patch: int = 8,
                          image_size: int = 32, num_labels: int = 10, seed: int = 0) -> VisionEncoder:
    """A randomly initialised tiny encoder (smoke runs and tests: the hub code path without weights).

    ``kind`` "vit" gives a ``ViTForImageClassification`` (so classifier entropy is defined), "clip" a
    ``CLIPVisionModel``; both preprocess like the CIFAR-10 ViT (no resize at 32 px, CIFAR mean/std).
    """
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    from softsae_lib.vision.train_vit import CIFAR10_MEAN, CIFAR10_STD

    torch.manual_seed(seed)
    common = dict(image_size=image_size, patch_size=patch, hidden_size=width, num_hidden_layers=depth,
                  num_attention_heads=max(1, width // 16), intermediate_size=2 * width)
    norm = dict(image_mean=list(CIFAR10_MEAN), image_std=list(CIFAR10_STD))
    if kind == "vit":
        model = ViTForImageClassification(ViTConfig(**common, num_labels=num_labels))
        proc = ViTImageProcessor(size={"height": image_size, "width": image_size}, **norm)
    elif kind == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(**common))
        proc = CLIPImageProcessor(size={"shortest_edge": image_size},
                                  crop_size={"height": image_size, "width": image_size}, **norm)
    else:
        raise ValueError(f"kind must be 'vit' or 'clip', got {kind!r}")
    return VisionEncoder(model.eval(), proc, f"random-tiny-{kind} (seed {seed}, untrained)")
