"""Run by tests/training/test_distributed.py under ``torchrun`` (or plainly, as one process).

    python tests/training/ddp_worker.py SPEC.json OUT_DIR

SPEC: {"arch", "model": {...config}, "train": {...TrainConfig}, "data": {"n", "d", "seed"},
       "stop_after": step or null}. Every rank writes OUT_DIR/rank<r>.pt with its model state,
dead-latent history and logged losses; ``stop_after`` raises after that step (an interruption).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from softsae_lib.saes import make_sae
from softsae_lib.training import TrainConfig, train_sae
from softsae_lib.training import distributed as dist_


def data(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d // 2, generator=g) @ torch.randn(d // 2, d, generator=g)


def run(spec: dict, out: Path) -> None:
    torch.set_num_threads(1)
    info = dist_.init_from_env("gloo")
    model = make_sae(spec["arch"], **spec["model"])

    def stop(step: int, terms: dict) -> None:
        if spec.get("stop_after") is not None and step == spec["stop_after"]:
            raise KeyboardInterrupt(f"interrupted after step {step}")

    try:
        res = train_sae(model, data(**spec["data"]), TrainConfig(**spec["train"]), on_step=stop)
    except KeyboardInterrupt:
        sys.exit(3)
    torch.save({"state": model.state_dict(), "loss": res.history["loss"].tolist(),
                "world_size": info.world_size}, out / f"rank{info.rank}.pt")


def main() -> None:
    run(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))


if __name__ == "__main__":
    main()
