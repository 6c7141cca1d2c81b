"""Simple per-image complexity proxies to set SoftSAE's k̂ against (all pure functions).

* compressed size: bytes of a lossless PNG (or JPEG) encoding, a Kolmogorov-complexity stand-in;
* edge density: share of pixels whose Sobel gradient magnitude exceeds a threshold, and the mean
  gradient magnitude (texture energy);
* classifier entropy: Shannon entropy of the softmax of an image classifier's logits (uncertainty).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)


def compressed_size(images: np.ndarray, fmt: str = "PNG", quality: int = 90) -> np.ndarray:
    """Encoded size in bytes of each ``images: (n, H, W, 3)`` uint8 image -> (n,) int64.

    PNG is lossless with maximal zlib effort; JPEG uses ``quality``.
    """
    fmt = fmt.upper()
    if fmt not in ("PNG", "JPEG"):
        raise ValueError(f"fmt must be 'PNG' or 'JPEG', got {fmt!r}")
    kwargs = {"optimize": True, "compress_level": 9} if fmt == "PNG" else {"quality": quality}
    sizes = np.empty(len(images), dtype=np.int64)
    for i, img in enumerate(_check(images)):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt, **kwargs)
        sizes[i] = buf.tell()
    return sizes


def _check(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (n, H, W, 3) uint8, got {images.shape} {images.dtype}")
    return images


def gradient_magnitude(images: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of the luminance, in [0, 1]-intensity units: (n, H-2, W-2) float64.

    Luminance uses the ITU-R BT.601 weights; only interior pixels (a full 3x3 window) are kept.
    """
    gray = _check(images).astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0  # (n, H, W)
    n, H, W = gray.shape
    win = np.lib.stride_tricks.sliding_window_view(gray, (3, 3), axis=(1, 2))  # (n, H-2, W-2, 3, 3)
    gx = np.einsum("nhwij,ij->nhw", win, _SOBEL_X)
    gy = np.einsum("nhwij,ij->nhw", win, _SOBEL_X.T)
    return np.hypot(gx, gy)


def edge_density(images: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Share of interior pixels with Sobel magnitude > ``threshold`` -> (n,) in [0, 1].

    The Sobel kernel's gain is 4, so a full black-to-white step gives magnitude 4; 0.5 marks an edge
    of about 1/8 contrast.
    """
    return (gradient_magnitude(images) > threshold).mean(axis=(1, 2))


def mean_gradient(images: np.ndarray) -> np.ndarray:
    """Mean Sobel gradient magnitude per image -> (n,)."""
    return gradient_magnitude(images).mean(axis=(1, 2))


def predictive_entropy(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """Entropy (nats) of softmax(``logits: (n, C)``) -> (n,) in [0, log C]."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be (n, classes), got shape {tuple(z.shape)}")
    logp = torch.log_softmax(z, dim=1)
    return (-(logp.exp() * logp).sum(dim=1)).numpy()


def complexity_proxies(images: np.ndarray, logits: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """All proxies for ``images: (n, H, W, 3)``; ``classifier_entropy`` only when ``logits`` is given."""
    out = {"png_bytes": compressed_size(images, "PNG").astype(np.float64),
           "jpeg_bytes": compressed_size(images, "JPEG").astype(np.float64),
           "edge_density": edge_density(images), "mean_gradient": mean_gradient(images)}
    if logits is not None:
        out["classifier_entropy"] = predictive_entropy(logits)
    return out
