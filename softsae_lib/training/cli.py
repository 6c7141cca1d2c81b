"""``python -m softsae_lib train``: train one SAE on an activation file, on one or many processes.

    python -m softsae_lib train --data acts.npy --arch soft --dict-size 16384 --k 32 --out runs/soft
    torchrun --nproc_per_node 8 -m softsae_lib train --data acts.npy ... --device cuda   # 8 GPUs, DDP

--data is a (N, d_model) .npy file (memory-mapped: each rank reads only its rows of every batch) or
an activation-cache folder written by softsae_lib.activations. --batch-size is the global batch;
under torchrun it is split evenly over the ranks. Rank 0 writes the model, history.csv and
train.json (arguments + provenance) to --out, all atomically; --resume continues from --out's
checkpoint after an interruption, with any number of ranks that divides the batch.

Every TrainConfig field is a flag (generated from the dataclass, so they cannot drift); model-config
fields of the chosen --arch are set with --set KEY=VALUE (e.g. --set alpha=0.01 k_max=64).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from softsae_lib.cli_fields import HelpFormatter, add_dataclass_arguments, convert, dataclass_values
from softsae_lib.saes import ARCHITECTURES
from softsae_lib.training.config import TrainConfig

# Set from other flags (--out), so not generated.
_SKIP = ("checkpoint_dir",)
MAX_DEFAULT_WARMUP = 1000


def default_warmup(steps: int) -> int:
    """Warm-up when --warmup-steps is not given: 10% of the steps, at most 1000 (so short runs train)."""
    return min(MAX_DEFAULT_WARMUP, steps // 10)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.formatter_class = HelpFormatter
    ap.description = __doc__.split("\n\n", 2)[2] if __doc__ else None
    ap.add_argument("--data", required=True, help=".npy (N, d_model) or activation-cache folder")
    ap.add_argument("--out", required=True, help="output folder (model, history, checkpoint)")
    model = ap.add_argument_group("model")
    model.add_argument("--arch", default="soft", choices=sorted(ARCHITECTURES), help="SAE architecture")
    model.add_argument("--dict-size", type=int, required=True, help="number of latents F")
    model.add_argument("--k", type=float, default=None,
                       help="target sparsity (top-k style architectures; default: the architecture's)")
    model.add_argument("--model-seed", type=int, default=0, help="seed of the model's initialisation")
    model.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                       help="other model-config fields of --arch, e.g. --set alpha=0.01 k_max=64")
    train = ap.add_argument_group("training (TrainConfig)")
    add_dataclass_arguments(train, TrainConfig, skip=_SKIP, defaults={"warmup_steps": None},
                            aliases={"autocast_bf16": ("--bf16",)},
                            notes={"warmup_steps": f"Default: 10%% of --steps, at most {MAX_DEFAULT_WARMUP}.",
                                   "k_anneal_steps": "SoftSAE's published recipe anneals k."})


def load_data(path: str):
    """The training data named by ``--data``; errors name the path and say what is wrong."""
    p = Path(path)
    if p.is_dir():
        from softsae_lib.activations.cache import ActivationCache  # the language/vision capture format

        return ActivationCache(p)  # read row-wise from its memory-mapped shards
    if not p.exists():
        raise FileNotFoundError(f"--data {path}: no such file or folder")
    if p.suffix != ".npy":
        raise ValueError(f"--data {path}: expected a .npy file or an activation-cache folder")
    with open(p, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise ValueError(f"--data {path}: not a .npy file (no NumPy header: another format, or damaged)")
    try:
        x = np.load(p, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        if "object" in str(err).lower() or "pickle" in str(err).lower():
            # numpy suggests allow_pickle=True, i.e. running code from the file: never here.
            raise ValueError(f"--data {path}: holds Python objects, not numbers; save a float array "
                             f"(np.save(path, x.astype(np.float32)))") from None
        raise ValueError(f"--data {path}: not a readable .npy array ({err})") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"--data {path}: not a readable .npy array (truncated or corrupt: {err})") from None
    if x.ndim != 2:
        raise ValueError(f"--data {path}: expected a 2-D array (N, d_model), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"--data {path}: expected floating-point activations, got dtype {x.dtype}")
    return x


def model_overrides(arch: str, items: list[str]) -> dict:
    """``--set KEY=VALUE`` items as typed values of ``arch``'s config fields."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        out[key] = convert(ARCHITECTURES[arch].config_cls, key, value)
    return out


def train_config(args: argparse.Namespace, out: Path, device: str | None) -> TrainConfig:
    """The TrainConfig of the parsed flags (warm-up derived from --steps when not given)."""
    values = dataclass_values(args, TrainConfig, skip=_SKIP)
    if values.get("warmup_steps") is None:
        values["warmup_steps"] = default_warmup(values["steps"])
    values["adam_betas"] = tuple(values["adam_betas"])
    values.update(device=device, checkpoint_dir=str(out))
    return TrainConfig(**values)


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
        raise ValueError(f"--out {out}: is a file, not a folder")
    data = load_data(args.data)
    extra = {"k": args.k} if args.k is not None else {}
    extra.update(model_overrides(args.arch, args.set))
    info = dist_.init_from_env()
    device = args.device
    if device == "cuda" and info.world_size > 1:
        device = f"cuda:{info.local_rank}"
    d_model = int(data.d if hasattr(data, "d") else data.shape[1])
    model = make_sae(args.arch, d_model=d_model, dict_size=args.dict_size, seed=args.model_seed, **extra)
    cfg = train_config(args, out, device)
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
        print(f"model written to {out / 'model'} (history: {out / 'history.csv'}, "
              f"record: {out / 'train.json'})")
    dist_.barrier()
    if info.world_size > 1:
        torch.distributed.destroy_process_group()
    return 0
