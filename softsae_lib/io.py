"""Save and load SAEs: ``config.json`` (architecture, config, checksum) + ``model.safetensors``.

The folder is self-describing, so ``load_sae(folder)`` needs no code edits or class argument.
Both files are written atomically, weights first; the config records the weights' SHA-256, so
a truncated, corrupted or mismatched weights file is reported rather than silently loaded.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from softsae_lib.atomic import atomic_path, atomic_write_text
from softsae_lib.atomic import sha256_file as _sha256
from softsae_lib.provenance import provenance
from softsae_lib.saes import ARCHITECTURES, SAE

FORMAT = "softsae_lib.sae"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class SAEFileError(ValueError):
    """A saved SAE folder is missing, corrupt, or does not match its config."""


def save_sae(model: SAE, folder: str | Path, metadata: dict | None = None) -> Path:
    """Write ``model`` to ``folder`` (created if needed); returns the folder path.

    ``metadata`` (JSON-serialisable) is stored under ``"metadata"`` in config.json.
    """
    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp))
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": model.arch,
        "config": dataclasses.asdict(model.config),
        "weights_sha256": _sha256(folder / WEIGHTS_FILE),
        "provenance": provenance(),
        "metadata": metadata or {},
    }
    atomic_write_text(folder / CONFIG_FILE, json.dumps(doc, indent=2, sort_keys=True))
    return folder


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
    if doc.get("format_version") != FORMAT_VERSION:
        raise SAEFileError(f"{path}: format_version {doc.get('format_version')} is not supported "
                           f"(this library reads {FORMAT_VERSION})")
    if doc.get("arch") not in ARCHITECTURES:
        raise SAEFileError(f"{path}: unknown arch {doc.get('arch')!r}; known: {sorted(ARCHITECTURES)}")
    return doc


def load_sae(folder: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Rebuild the SAE saved in ``folder``, bit-identical to the saved one."""
    folder = Path(folder)
    doc = read_sae_config(folder)
    cls = ARCHITECTURES[doc["arch"]]
    fields = {f.name for f in dataclasses.fields(cls.config_cls)}
    unknown = sorted(set(doc["config"]) - fields)
    if unknown:
        raise SAEFileError(f"{folder / CONFIG_FILE}: config has unknown field(s) {unknown} "
                           f"for arch {doc['arch']!r}")
    try:
        model = cls(cls.config_cls(**doc["config"]))
    except (TypeError, ValueError) as err:
        raise SAEFileError(f"{folder / CONFIG_FILE}: invalid config for {doc['arch']!r}: {err}") from err
    weights = folder / WEIGHTS_FILE
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
