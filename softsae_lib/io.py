"""Save and load SAEs: ``config.json`` (architecture, config, checksums) + a safetensors weights file.

The folder is self-describing, so ``load_sae(folder)`` needs no code edits or class argument.

Saving is all-or-nothing for the folder: the weights go to a new content-addressed file
``model-<sha256[:16]>.safetensors``, then ``config.json`` (naming that file and its SHA-256) is
replaced atomically. That rename is the single commit point: before it the folder still holds the
previous model (its config names its own weights file, which is left alone), after it the new one;
superseded weights files are removed only after the commit. The config carries its own SHA-256
(``config_sha256``, over the canonical JSON of every other key) and every config field, so an edited,
truncated or hand-written config is reported rather than filled in with defaults.

Folders written by the previous format (``format_version`` 1: weights in ``model.safetensors``,
no config checksum) still load; every config field is required there too (that writer stored all).
Configs saved before a field was added to an architecture's config are brought up to date by its
``config_cls.migrate`` (filled with the old behaviour, e.g. SoftSAE without its schedule fields),
before the all-fields check; the saved file is not changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from softsae_lib.atomic import atomic_path, atomic_write_text
from softsae_lib.atomic import sha256_file as _sha256
from softsae_lib.provenance import provenance
from softsae_lib.saes import ARCHITECTURES, SAE

FORMAT = "softsae_lib.sae"
FORMAT_VERSION = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"  # the weights file of format_version 1 folders
_WEIGHTS_NAME = re.compile(r"model-[0-9a-f]{16}\.safetensors")
_REQUIRED = ("format", "format_version", "arch", "config", "weights_file", "weights_sha256",
             "provenance", "metadata", "config_sha256")


class SAEFileError(ValueError):
    """A saved SAE folder is missing, corrupt, or does not match its config."""


def config_digest(doc: dict) -> str:
    """SHA-256 of the canonical JSON of ``doc`` without its ``config_sha256`` key."""
    body = {k: v for k, v in doc.items() if k != "config_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_sae(model: SAE, folder: str | Path, metadata: dict | None = None) -> Path:
    """Write ``model`` to ``folder`` (created if needed); returns the folder path.

    ``metadata`` (JSON-serialisable) is stored under ``"metadata"`` in config.json. A failure or a
    kill at any point leaves the folder's previous model loadable.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SAEFileError(f"{folder}: exists and is not a folder; cannot save an SAE there")
    try:  # before any file is touched: unserialisable metadata must not cost the old model
        meta_json = json.loads(json.dumps(metadata or {}))
    except (TypeError, ValueError) as err:
        raise TypeError(f"save_sae({folder}): metadata is not JSON-serialisable ({err})") from err
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    blob = save(tensors)  # in memory: the file name is its digest
    digest = hashlib.sha256(blob).hexdigest()
    weights_file = f"model-{digest[:16]}.safetensors"
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": model.arch,
        "config": dataclasses.asdict(model.config),
        "weights_file": weights_file,
        "weights_sha256": digest,
        "provenance": provenance(),
        "metadata": meta_json,
    }
    doc["config_sha256"] = config_digest(doc)
    text = json.dumps(doc, indent=2, sort_keys=True)
    with atomic_path(folder / weights_file) as tmp:
        tmp.write_bytes(blob)
    atomic_write_text(folder / CONFIG_FILE, text)  # the commit point
    for old in [*folder.glob("model-*.safetensors"), folder / WEIGHTS_FILE]:
        if old.name != weights_file and old.is_file():
            old.unlink()
    return folder


def _require_config_fields(path: Path, doc: dict) -> None:
    """Migrate ``doc['config']`` (in place) to the current config class and require every field."""
    cls = ARCHITECTURES[doc["arch"]]
    cfg = doc.get("config")
    if not isinstance(cfg, dict):
        raise SAEFileError(f"{path}: field 'config' must be an object of {cls.config_cls.__name__} "
                           f"fields, got {type(cfg).__name__}")
    cfg = doc["config"] = cls.config_cls.migrate(cfg)
    fields = {f.name for f in dataclasses.fields(cls.config_cls)}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise SAEFileError(f"{path}: config has unknown field(s) {unknown} for arch {doc['arch']!r}")
    missing = sorted(fields - set(cfg))
    if missing:
        raise SAEFileError(f"{path}: config lacks field(s) {missing} for arch {doc['arch']!r} "
                           f"(every field is required; defaults are not filled in)")


def read_sae_config(folder: str | Path) -> dict:
    """Parse and check ``folder/config.json``; raises :class:`SAEFileError` naming the problem."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise SAEFileError(f"{path}: not found (is {folder} a folder written by save_sae?)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SAEFileError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SAEFileError(f"{path}: not a softsae_lib SAE config (missing 'format': {FORMAT!r})")
    version = doc.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise SAEFileError(f"{path}: format_version {version} is not supported "
                           f"(this library reads 1 and {FORMAT_VERSION})")
    if version == FORMAT_VERSION:
        missing = [k for k in _REQUIRED if k not in doc]
        if missing:
            raise SAEFileError(f"{path}: lacks required field(s) {missing}")
        if doc["config_sha256"] != config_digest(doc):
            raise SAEFileError(f"{path}: config_sha256 does not match the file's content "
                               f"(config.json was edited or corrupted)")
        name = doc["weights_file"]
        if not isinstance(name, str) or not _WEIGHTS_NAME.fullmatch(name):
            raise SAEFileError(f"{path}: weights_file {name!r} is not a plain "
                               f"'model-<16 hex>.safetensors' name in this folder")
    if doc.get("arch") not in ARCHITECTURES:
        raise SAEFileError(f"{path}: unknown arch {doc.get('arch')!r}; known: {sorted(ARCHITECTURES)}")
    _require_config_fields(path, doc)
    return doc


def weights_path(folder: str | Path) -> Path:
    """The weights file that ``folder/config.json`` names (``model.safetensors`` in old folders)."""
    doc = read_sae_config(folder)
    return Path(folder) / doc.get("weights_file", WEIGHTS_FILE)


def load_sae(folder: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Rebuild the SAE saved in ``folder``, bit-identical to the saved one."""
    folder = Path(folder)
    doc = read_sae_config(folder)
    cls = ARCHITECTURES[doc["arch"]]
    try:
        model = cls(cls.config_cls(**doc["config"]))
    except (TypeError, ValueError) as err:
        raise SAEFileError(f"{folder / CONFIG_FILE}: invalid config for {doc['arch']!r}: {err}") from err
    weights = folder / doc.get("weights_file", WEIGHTS_FILE)
    if not weights.is_file():
        raise SAEFileError(f"{weights}: not found")
    if _sha256(weights) != doc.get("weights_sha256"):
        raise SAEFileError(f"{weights}: checksum does not match {CONFIG_FILE} "
                           f"(file corrupted, truncated or from another save)")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise SAEFileError(f"{weights}: cannot read safetensors ({err})") from err
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or extra or shapes:
        raise SAEFileError(f"{weights}: does not match the config in {CONFIG_FILE}: "
                           f"missing {missing}, unexpected {extra}, shape mismatches {shapes}")
    model.load_state_dict(state, strict=True)
    return model.to(device)
