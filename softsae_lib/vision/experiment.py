"""Glue for the ViT notebook: images -> cached embeddings -> tensors, per-class summaries, image grids."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from softsae_lib.vision.capture import Layer, VisionEncoder, capture_images
from softsae_lib.vision.images import ImageSet, cache_root


@dataclass
class Embeddings:
    """Embeddings of an ImageSet, row-aligned with it."""

    x: torch.Tensor  # (n, d) float32
    labels: np.ndarray  # (n,) int64
    image_ids: np.ndarray  # (n,) int64
    logits: np.ndarray | None  # (n, classes) when the encoder has a classifier head


def embed(encoder: VisionEncoder, images: ImageSet, tag: str, layer: Layer = "pooled", batch_size: int = 128,
          log=print) -> Embeddings:
    """Capture (or reuse) ``images``' embeddings under ``~/.cache/softsae/vit_embeddings`` and load them.

    The folder name carries the encoder, its weight fingerprint, ``tag`` (e.g. "train-30000"), the
    layer and a hash of the image source, so re-exported weights or the same images read from another
    path (a second clone) get a fresh cache instead of a mismatch.
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder.name)[:60]
    src = hashlib.sha256(str(images.source).encode()).hexdigest()[:12]
    root = cache_root() / "vit_embeddings" / f"{safe}-{encoder.fingerprint()}" / f"{tag}-{layer}-{src}"
    res = capture_images(encoder, images, root, layer=layer, batch_size=batch_size, log=log)
    labels = res.cls.column("label")
    if not np.array_equal(labels, images.labels):
        raise RuntimeError(f"{root}: cached labels do not match the images; delete the folder")
    return Embeddings(torch.from_numpy(np.array(res.cls.vectors(), dtype=np.float32)), labels,
                      res.cls.column("image_id"),
                      None if res.logits is None else np.array(res.logits.vectors(), dtype=np.float32))


def per_class_table(frame: pd.DataFrame, columns: list[str], label: str,
                    class_names: tuple[str, ...]) -> pd.DataFrame:
    """Mean, std and median of each column per class; one row per class, by the first column's mean."""
    g = frame.groupby(label)[columns]
    table = pd.concat({"mean": g.mean(), "std": g.std(), "median": g.median()}, axis=1)
    table.columns = [f"{c}_{s}" for s, c in table.columns]
    table.index = [class_names[i] for i in table.index]
    return table.sort_values(f"{columns[0]}_mean")


def extreme_indices(values: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``n`` lowest and ``n`` highest values; ties broken by a seeded shuffle."""
    values = np.asarray(values, dtype=float)
    perm = np.random.default_rng(seed).permutation(len(values))
    order = perm[np.argsort(values[perm], kind="stable")]
    return order[:n], order[::-1][:n]


def image_grid(images: np.ndarray, captions: list[str], title: str, cols: int = 8) -> plt.Figure:
    """A grid of ``images: (n, H, W, 3)`` uint8 with one caption each."""
    n = len(images)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows + 0.5), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, cap in zip(axes.ravel(), images, captions, strict=False):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(cap, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig
