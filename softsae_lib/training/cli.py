"""``python -m softsae_lib train``: train one SAE on an activation file, on one or many processes.

    python -m softsae_lib train --data acts.npy --arch soft --dict-size 16384 --k 32 --out runs/soft
    torchrun --nproc_per_node 8 -m softsae_lib train --data acts.npy ... --device cuda   # 8 GPUs, DDP

``--data`` is a (N, d_model) ``.npy`` file (memory-mapped: each rank reads only its rows of every
batch) or an activation-cache folder written by :mod:`softsae_lib.activations`. ``--batch-size`` is
the *global* batch; under torchrun it is split evenly over the ranks. Rank 0 writes the model
(``save_sae``), ``history.csv`` and ``train.json`` (arguments + provenance) to ``--out``, all
atomically; ``--resume`` continues from ``--out``/checkpoint after an interruption, with any number
of ranks that divides the batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from softsae_lib.training.config import TrainConfig


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--data", required=True, help=".npy (N, d_model) or activation-cache folder")
    ap.add_argument("--arch", default="soft", help="registered SAE architecture (default: soft)")
    ap.add_argument("--dict-size", type=int, required=True)
    ap.add_argument("--k", type=float, default=None, help="target sparsity (top-k style architectures)")
    ap.add_argument("--model-seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more model-config fields, e.g. --set alpha=0.01 k_max=64 (JSON values)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=4096, help="global batch (all ranks together)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--warmup-steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="data-order seed")
    ap.add_argument("--device", default=None, help="cpu | cuda (under torchrun: this rank's GPU)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA (k̂ stays float32)")
    ap.add_argument("--checkpoint-every", type=int, default=500)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--out", required=True, help="output folder (model, history, checkpoint)")


def _load(path: str):
    p = Path(path)
    if p.is_dir():
        from softsae_lib.activations.cache import ActivationCache  # the language/vision capture format

        return ActivationCache(p)  # read row-wise from its memory-mapped shards
    if p.suffix != ".npy":
        raise ValueError(f"--data {path}: expected a .npy file or an activation-cache folder")
    if not p.is_file():
        raise ValueError(f"--data {path}: file not found")
    with open(p, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":  # numpy would suggest unpickling it: never
            raise ValueError(f"--data {path}: not a .npy file (no NUMPY header)")
    try:
        x = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"--data {path}: not a readable numeric .npy file (truncated, or holding "
                         f"Python objects): {err}") from None
    if not isinstance(x, np.ndarray) or not (np.issubdtype(x.dtype, np.floating)
                                             or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"--data {path}: expected a numeric array, got dtype {getattr(x, 'dtype', type(x))}")
    if x.ndim != 2:
        raise ValueError(f"--data {path}: expected a 2-D array (N, d_model), got shape {x.shape}")
    return x


def _overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _check_overrides(arch: str, values: dict) -> None:
    """Refuse --set values of the wrong kind before they reach the model (naming the field)."""
    from softsae_lib.saes import ARCHITECTURES

    if arch not in ARCHITECTURES:
        raise ValueError(f"--arch {arch!r}: unknown; known: {sorted(ARCHITECTURES)}")
    types = {f.name: str(f.type) for f in dataclasses.fields(ARCHITECTURES[arch].config_cls)}
    for key, value in values.items():
        if key not in types:
            raise ValueError(f"--set {key}: not a config field of --arch {arch} (fields: {sorted(types)})")
        t = types[key]
        wrong = ((isinstance(value, str) and "str" not in t and "Literal" not in t)
                 or (isinstance(value, bool) and "bool" not in t)
                 or (value is None and "None" not in t)
                 or (isinstance(value, (list, dict)) and not any(w in t for w in ("tuple", "list", "dict"))))
        if wrong:
            raise ValueError(f"--set {key}={value!r}: expected a value of type {t} (JSON, e.g. "
                             f"--set {key}=0.5)")


def run(args: argparse.Namespace) -> int:
    import torch

    from softsae_lib.atomic import atomic_write_text
    from softsae_lib.io import save_sae
    from softsae_lib.provenance import provenance
    from softsae_lib.saes import make_sae
    from softsae_lib.training import distributed as dist_
    from softsae_lib.training.trainer import train_sae

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is a file, not a folder")
    info = dist_.init_from_env()
    device = args.device
    if device == "cuda" and info.world_size > 1:
        device = f"cuda:{info.local_rank}"
    data = _load(args.data)
    extra = {"k": args.k} if args.k is not None else {}
    extra.update(_overrides(args.set))
    _check_overrides(args.arch, extra)
    d_model = int(data.d if hasattr(data, "d") else data.shape[1])
    model = make_sae(args.arch, d_model=d_model, dict_size=args.dict_size, seed=args.model_seed,
                     **extra)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      warmup_steps=args.warmup_steps, seed=args.seed, device=device,
                      autocast_bf16=args.bf16, checkpoint_dir=str(out),
                      checkpoint_every=args.checkpoint_every, resume=args.resume, progress=None)
    if info.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    dist_.barrier()
    result = train_sae(model, data, cfg)
    if info.rank == 0:
        save_sae(model.to("cpu"), out / "model", metadata={"train_config": dataclasses.asdict(cfg)})
        atomic_write_text(out / "history.csv", result.history.to_csv(index=False))
        record = {"args": vars(args), "world_size": info.world_size, "provenance": provenance(),
                  "final": result.history.iloc[-1].to_dict() if len(result.history) else {}}
        atomic_write_text(out / "train.json", json.dumps(record, indent=2, default=str))
    dist_.barrier()
    if info.world_size > 1:
        torch.distributed.destroy_process_group()
    return 0
