"""Image sources for the vision arm: CIFAR-10 from the offline JPEG tarball, an image folder, a HF dataset.

All readers return an :class:`ImageSet` of uint8 RGB arrays ``images: (n, H, W, 3)`` with integer labels and
stable integer image ids, so the capture code and the notebooks never depend on torchvision.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from softsae_lib.atomic import atomic_path, atomic_write_text, cache_root, sha256_file
from softsae_lib.resources import CIFAR10_TAR, data_file

CIFAR10_CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer",
                                    "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ImageSet:
    """A labelled set of same-sized RGB images."""

    images: np.ndarray  # (n, H, W, 3) uint8 RGB
    labels: np.ndarray  # (n,) int64 class index into ``class_names``
    image_ids: np.ndarray  # (n,) int64 stable id of each image within its source/split
    class_names: tuple[str, ...]  # label index -> class name
    source: str  # where the images came from (file, folder or dataset name)

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"{self.source}: images must be (n, H, W, 3) uint8, got "
                             f"{self.images.shape} {self.images.dtype}")
        if self.labels.shape != (n,) or self.image_ids.shape != (n,):
            raise ValueError(f"{self.source}: labels {self.labels.shape} / image_ids {self.image_ids.shape} "
                             f"do not match {n} images")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> ImageSet:
        """Rows ``index`` (ids and labels travel with the images)."""
        index = np.asarray(index)
        return ImageSet(self.images[index], self.labels[index], self.image_ids[index], self.class_names,
                        self.source)

    def stratified(self, per_class: int, seed: int = 0) -> ImageSet:
        """At most ``per_class`` images of each class, drawn with ``seed``; original order kept."""
        rng = np.random.default_rng(seed)
        keep = [rng.permutation(np.flatnonzero(self.labels == c))[:per_class]
                for c in range(len(self.class_names))]
        return self.subset(np.sort(np.concatenate(keep)))


def default_cifar10_tar() -> Path:
    """The CIFAR-10 JPEG tarball of the project's data folder, verified against its SHA-256."""
    return data_file(CIFAR10_TAR)


def _decode(data: bytes, where: str) -> np.ndarray:
    """One encoded image -> (H, W, 3) uint8 RGB; the error names the file."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(f"{where}: cannot decode image ({err})") from err


def _decode_cifar_tar(tar_path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Decode every ``<split>/<class>/<name>.<ext>`` member; rows sorted by (class, file name).

    Returns split -> (images (n, 32, 32, 3) uint8, labels (n,), ids (n,)), the id being the file-name
    number when numeric (``0338.jpg`` -> 338) so ids match the tarball's naming.
    """
    found: dict[str, list[tuple[int, str, np.ndarray]]] = {}
    try:
        tf = tarfile.open(tar_path, "r:*")
    except (tarfile.TarError, OSError) as err:
        raise ValueError(f"{tar_path}: not a readable tar archive ({err})") from err
    with tf:
        try:
            for member in tf:
                if not member.isfile():
                    continue
                parts = Path(member.name).parts
                parts = parts[1:] if parts and parts[0] == "." else parts
                # The split name becomes a cache file name: only plain relative names are accepted.
                if Path(member.name).is_absolute() or ".." in parts:
                    raise ValueError(f"{tar_path}:{member.name}: member name is absolute or leaves the "
                                     f"archive's folder; refusing the archive")
                if len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_SUFFIXES):
                    continue
                split, cls, name = parts[-3], parts[-2], parts[-1]
                if not split.replace("-", "_").isidentifier():
                    raise ValueError(f"{tar_path}:{member.name}: split name {split!r} is not a plain name")
                if cls not in CIFAR10_CLASSES:
                    raise ValueError(f"{tar_path}:{member.name}: unknown CIFAR-10 class {cls!r}")
                fh = tf.extractfile(member)
                assert fh is not None
                img = _decode(fh.read(), f"{tar_path}:{member.name}")
                if img.shape != (32, 32, 3):
                    raise ValueError(f"{tar_path}:{member.name}: expected 32x32 RGB, got {img.shape}")
                found.setdefault(split, []).append((CIFAR10_CLASSES.index(cls), name, img))
        except (tarfile.TarError, EOFError, OSError) as err:
            raise ValueError(f"{tar_path}: corrupt or truncated archive ({err})") from err
    if not found:
        raise ValueError(f"{tar_path}: no <split>/<class>/<image> members found")
    out = {}
    for split, rows in found.items():
        rows.sort(key=lambda r: (r[0], r[1]))
        stems = [Path(r[1]).stem for r in rows]
        ids = (np.array([int(s) for s in stems], dtype=np.int64) if all(s.isdigit() for s in stems)
               else np.arange(len(rows), dtype=np.int64))
        out[split] = (np.stack([r[2] for r in rows]), np.array([r[0] for r in rows], dtype=np.int64), ids)
    return out


def load_cifar10(split: str = "train", tar_path: str | Path | None = None,
                 cache_dir: str | Path | None = None) -> ImageSet:
    """CIFAR-10 ``split`` ("train" or "test") from the JPEG tarball, decoded once and cached as .npy.

    The cache is keyed by the tarball's sha256, so a changed archive is decoded afresh; the arrays are
    written atomically, so an interrupted decode leaves no half cache behind.
    Ids are unique within a class only (the file numbers); use (label, image_id) to name an image.
    """
    tar_path = Path(tar_path) if tar_path is not None else default_cifar10_tar()
    if not tar_path.is_file():
        raise FileNotFoundError(f"{tar_path}: CIFAR-10 tarball not found")
    digest = sha256_file(tar_path)
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "cifar10" / digest[:16]
    done = folder / "done.json"
    if not done.is_file():
        decoded = _decode_cifar_tar(tar_path)
        for name, (imgs, labels, ids) in decoded.items():
            for kind, arr in (("images", imgs), ("labels", labels), ("ids", ids)):
                with atomic_path(folder / f"{name}_{kind}.npy") as tmp:
                    with open(tmp, "wb") as fh:
                        np.save(fh, arr)
        atomic_write_text(done, json.dumps({"sha256": digest, "splits": sorted(decoded),
                                            "format": _FORMAT_VERSION}))
    meta = json.loads(done.read_text())
    if split not in meta["splits"]:
        raise ValueError(f"{tar_path}: no split {split!r} (has {meta['splits']})")
    return ImageSet(np.load(folder / f"{split}_images.npy"), np.load(folder / f"{split}_labels.npy"),
                    np.load(folder / f"{split}_ids.npy"), CIFAR10_CLASSES, f"{tar_path}:{split}")


def _resize(img: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or img.shape[:2] == (size, size):
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC), dtype=np.uint8)


def load_image_folder(root: str | Path, size: int | None = None,
                      limit_per_class: int | None = None) -> ImageSet:
    """Images in ``root/<class>/*.<ext>`` (the common user layout); classes sorted by name.

    Images of different sizes need ``size`` (each is resized to ``size``x``size``); ids are row numbers.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root}: no class sub-folders (expected root/<class>/<image>)")
    images, labels = [], []
    for c, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files[:limit_per_class]:
            img = _resize(_decode(path.read_bytes(), str(path)), size)
            if images and img.shape != images[0].shape:
                raise ValueError(f"{path}: size {img.shape[:2]} differs from {images[0].shape[:2]}; "
                                 f"pass size=")
            images.append(img)
            labels.append(c)
    if not images:
        raise ValueError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) under the class folders")
    return ImageSet(np.stack(images), np.array(labels, dtype=np.int64),
                    np.arange(len(images), dtype=np.int64), tuple(classes), str(root))


def load_hf_images(name: str, split: str = "train", image_column: str | None = None,
                   label_column: str = "label", size: int | None = None,
                   limit: int | None = None) -> ImageSet:
    """A Hugging Face ``datasets`` image dataset (needs a network and ``pip install datasets``)."""
    try:
        import datasets
    except ImportError as err:  # optional dependency, only for online users
        raise ImportError("load_hf_images needs the `datasets` package: pip install datasets") from err
    ds = datasets.load_dataset(name, split=split)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    col = image_column or next((c for c in ("img", "image", "pixel_values") if c in ds.column_names), None)
    if col is None or label_column not in ds.column_names:
        raise ValueError(f"{name}[{split}]: need an image and a {label_column!r} column, "
                         f"has {ds.column_names}")
    feature = ds.features[label_column]
    class_names = tuple(getattr(feature, "names", None) or sorted({str(v) for v in ds[label_column]}))
    images = [_resize(np.asarray(ex[col].convert("RGB"), dtype=np.uint8), size) for ex in ds]
    return ImageSet(np.stack(images), np.asarray(ds[label_column], dtype=np.int64),
                    np.arange(len(images), dtype=np.int64), class_names, f"hf:{name}:{split}")
