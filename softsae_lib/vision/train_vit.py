"""Train the project's own small ViT on CIFAR-10 (no pretrained ViT weights can be obtained offline).

The model is a plain ``transformers.ViTForImageClassification`` (32x32 input, patch 4), so the exported
folder loads like any hub ViT. Recipe: random crop (4-pixel zero padding) + horizontal flip, AdamW with
linear warm-up and cosine decay, label smoothing. Every step's augmentation and every epoch's order are
derived from the seed, and checkpoints are atomic, so an interrupted run resumes where it stopped.

CLI::

    python -m softsae_lib.vision.train_vit --out data/models/cifar10-vit --minutes 110 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from softsae_lib.atomic import atomic_path
from softsae_lib.vision.export import export_vit
from softsae_lib.vision.images import CIFAR10_CLASSES, ImageSet, cache_root, load_cifar10

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


# Settings that may change between a run and its resumption (they do not change the result).
RUNTIME_KEYS = ("minutes", "threads", "device", "checkpoint_minutes", "extra")


@dataclass
class ViTTrainConfig:
    """Architecture and recipe of the CIFAR-10 ViT."""

    width: int = 192  # hidden size
    depth: int = 6  # transformer layers
    heads: int = 3  # attention heads
    mlp_ratio: int = 2  # MLP hidden size / width
    patch: int = 4  # patch side in pixels (32 / patch)^2 tokens
    epochs: int = 0  # cosine-schedule length; 0 = fixed after `calibrate_steps` from the time budget
    minutes: float = 110.0  # wall-clock budget; training stops (with an export) when it is spent
    batch_size: int = 128  # images per step
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 0.05  # AdamW decoupled weight decay
    warmup_epochs: float = 1.0  # linear warm-up length
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    pad: int = 4  # random-crop zero padding in pixels
    seed: int = 0  # seeds init, epoch order and augmentation
    threads: int = 1  # torch CPU threads
    device: str = "cpu"  # "cpu" or "cuda" (the paper profile)
    bf16: bool = False  # bf16 autocast (on this project's CPUs it was slower than fp32)
    train_limit: int | None = None  # use a seeded random n training images (smoke runs)
    test_limit: int | None = None  # evaluate on a seeded random n test images (smoke runs)
    calibrate_steps: int = 30  # steps timed to fix `epochs` when epochs == 0
    checkpoint_minutes: float = 10.0  # also checkpoint mid-epoch this often
    extra: dict = field(default_factory=dict)  # free-form notes recorded in the model card


def make_vit(cfg: ViTTrainConfig, num_labels: int = 10, class_names: tuple[str, ...] = CIFAR10_CLASSES):
    """A randomly initialised ``ViTForImageClassification`` for 32x32 images (seeded by ``cfg.seed``)."""
    from transformers import ViTConfig, ViTForImageClassification

    conf = ViTConfig(image_size=32, patch_size=cfg.patch, num_channels=3, hidden_size=cfg.width,
                     num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
                     intermediate_size=cfg.mlp_ratio * cfg.width, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, num_labels=num_labels,
                     id2label=dict(enumerate(class_names)),
                     label2id={c: i for i, c in enumerate(class_names)})
    torch.manual_seed(cfg.seed)
    return ViTForImageClassification(conf)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> float ``(B, 3, H, W)`` standardised with the CIFAR-10 mean/std."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding plus horizontal flip; ``x: (B, 3, H, W)`` normalised images."""
    B, _, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    rows = (oy[:, None] + torch.arange(H))[:, :, None]  # (B, H, 1)
    cols = (ox[:, None] + torch.arange(W))[:, None, :]  # (B, 1, W)
    out = xp[torch.arange(B)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # (B, 3, H, W)
    flip = torch.rand(B, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out).contiguous()


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * peak * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model, data: ImageSet, batch_size: int = 500, bf16: bool = False) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (inputs standardised as in training)."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(data), batch_size):
        x = normalize(torch.from_numpy(data.images[i:i + batch_size])).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(pixel_values=x).logits
        correct += int((logits.argmax(-1).cpu().numpy() == data.labels[i:i + batch_size]).sum())
    model.train()
    return correct / max(1, len(data))


def _replan(state: dict, cfg: ViTTrainConfig, steps_per_epoch: int, log) -> None:
    """Auto mode: refit the cosine schedule's length to the last epoch's pace and the budget left.

    Shared CPUs slow down and speed up unpredictably; refitting keeps the final epochs at a low
    learning rate instead of cutting them off at a high one (or idling when the pace improves). After
    warm-up the rate never rises (see ``lr_cap`` in :meth:`_Run._set_lr`), so growing the schedule holds
    the current rate longer rather than jumping back up. Retrain with ``--epochs`` to fix the length.
    """
    hist = state["history"]
    if len(hist) < 1:
        return
    last = hist[-1]["minutes"] - (hist[-2]["minutes"] if len(hist) > 1 else 0.0)
    per_epoch = last / max(1e-9, hist[-1]["epoch"] - (hist[-2]["epoch"] if len(hist) > 1 else 0.0))
    done_epochs = state["step"] / steps_per_epoch
    affordable = int((cfg.minutes - state["elapsed"] / 60) * 0.97 / per_epoch)
    new = int(math.ceil(done_epochs)) + max(0, affordable)
    if new != state["epochs"]:
        log(f"pace {per_epoch:.1f} min/epoch: schedule refitted from {state['epochs']} to {new} epochs")
        state["epochs"] = new


def _sample(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``limit`` of ``n`` rows."""
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, device: str) -> dict:
    """Read a ViT checkpoint with ``weights_only=True`` (a crafted file cannot run code) and check
    its structure; raises ``ValueError`` naming the file and what is wrong."""
    import pickle

    try:
        ck = torch.load(path, weights_only=True, map_location=device)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: holds objects other than tensors and plain values, which are not "
                         f"loaded (crafted, or from an older version); delete it to start over") from err
    except Exception as err:  # a damaged zip/pickle raises several types
        raise ValueError(f"{path}: cannot be read ({type(err).__name__}: {err}); delete it to start "
                         f"over") from err
    want = {"model": dict, "optimizer": dict, "state": dict, "config": dict}
    if not isinstance(ck, dict) or any(not isinstance(ck.get(k), t) for k, t in want.items()):
        got = {k: type(ck.get(k)).__name__ for k in want} if isinstance(ck, dict) else type(ck).__name__
        raise ValueError(f"{path}: not a ViT training checkpoint (expected dict fields {list(want)}, "
                         f"got {got}); delete it to start over")
    if not all(k in ck["state"] for k in ("step", "epochs", "elapsed", "history")):
        raise ValueError(f"{path}: field 'state' lacks step/epochs/elapsed/history; delete it to start over")
    return ck


def _load_data(cfg: ViTTrainConfig, train: ImageSet | None,
               test: ImageSet | None) -> tuple[ImageSet, ImageSet]:
    """The (train, test) sets, uint8 images (N, 32, 32, 3): as given or read from the CIFAR-10 tarball,
    then cut to ``cfg.train_limit`` / ``cfg.test_limit`` images if set."""
    train = train if train is not None else load_cifar10("train")
    test = test if test is not None else load_cifar10("test")
    if cfg.train_limit:  # a seeded random subset: the files are sorted by class
        train = train.subset(_sample(len(train), cfg.train_limit, cfg.seed))
    if cfg.test_limit:
        test = test.subset(_sample(len(test), cfg.test_limit, cfg.seed))
    return train, test


def _make_optimizer(model: torch.nn.Module, cfg: ViTTrainConfig) -> torch.optim.AdamW:
    """AdamW at ``cfg.lr``, the usual ViT recipe: weight decay on the weight matrices only (≥ 2-D and not
    embeddings), none on biases, norms and embeddings."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embeddings" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embeddings" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.999))


def _initial_state(cfg: ViTTrainConfig, ckpt_path: Path, model: torch.nn.Module,
                   opt: torch.optim.Optimizer, log: Callable[[str], object]) -> dict:
    """A fresh training state, or the one at ``ckpt_path`` with model and optimizer restored in place; a
    checkpoint of another config (``RUNTIME_KEYS`` aside) is refused, as resuming would mix two recipes."""
    if not ckpt_path.is_file():
        return {"step": 0, "epochs": cfg.epochs, "elapsed": 0.0, "history": []}
    ck = _load_checkpoint(ckpt_path, cfg.device)
    mine = {k: v for k, v in asdict(cfg).items() if k not in RUNTIME_KEYS}
    theirs = {k: ck["config"].get(k, v) for k, v in mine.items()}
    if theirs != mine:
        diff = {k: (theirs[k], mine[k]) for k in mine if theirs[k] != mine[k]}
        raise ValueError(f"{ckpt_path}: checkpoint was made with a different config (checkpoint vs now: "
                         f"{diff}); remove it to start over")
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    state = ck["state"]
    log(f"resumed from {ckpt_path} at step {state['step']} ({state['elapsed'] / 60:.1f} min used)")
    return state


@dataclass
class _Run:
    """One call of :func:`train_vit`: what its epoch loop, checkpoints and exports share."""

    cfg: ViTTrainConfig
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    train: ImageSet
    test: ImageSet
    state: dict  # step, epochs, elapsed, history (and lr_cap): all a resumed run needs besides weights
    ckpt_path: Path
    out: str | Path
    steps_per_epoch: int
    log: Callable[[str], object]
    start: float = 0.0  # perf_counter() origin, moved back by the time earlier calls used (one budget)
    last_ckpt: float = 0.0
    calib_start: float = 0.0
    steps_run: int = 0  # steps of this call only: max_steps and the calibration count these

    def loop(self, max_steps: int | None) -> None:
        """Train epoch after epoch until the planned epochs, ``max_steps`` or the time budget is reached."""
        self.model.train()
        self.start = time.perf_counter() - self.state["elapsed"]
        self.last_ckpt = time.perf_counter()
        done = False
        while not done:
            epoch = self.state["step"] // self.steps_per_epoch
            if self.state["epochs"] and epoch >= self.state["epochs"]:
                break
            loss, done = self._run_epoch(epoch, max_steps)
            self._end_epoch(loss, done)

    def _run_epoch(self, epoch: int, max_steps: int | None) -> tuple[torch.Tensor, bool]:
        """The remaining steps of ``epoch`` (all of them unless resumed mid-epoch). Returns the last step's
        loss, a () tensor, and whether training must stop (``max_steps`` reached or time budget spent)."""
        cfg, state = self.cfg, self.state
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(self.train))
        for b in range(state["step"] % self.steps_per_epoch, self.steps_per_epoch):
            step = state["step"]
            self._calibrate()
            lr = self._set_lr(step)
            loss = self._train_step(order[b * cfg.batch_size:(b + 1) * cfg.batch_size], step, lr)
            state["step"] += 1
            self.steps_run += 1
            state["elapsed"] = time.perf_counter() - self.start
            if step % 50 == 0:
                self.log(f"step {step} epoch {epoch} loss {loss.item():.4f} lr {lr:.2e} "
                         f"{state['elapsed'] / 60:.1f} min")
            out_of_time = state["elapsed"] > cfg.minutes * 60
            if (max_steps is not None and self.steps_run >= max_steps) or out_of_time:
                return loss, True
            if time.perf_counter() - self.last_ckpt > cfg.checkpoint_minutes * 60:
                self.checkpoint()
        return loss, False

    def _calibrate(self) -> None:
        """Auto mode (``epochs == 0``): fix the schedule's length from the time of ``calibrate_steps``
        steps and the budget, leaving room for the evaluations."""
        cfg, state = self.cfg, self.state
        if state["epochs"] == 0 and self.steps_run == 5:  # skip warm-up steps when timing
            self.calib_start = time.perf_counter()
        if state["epochs"] == 0 and self.steps_run == 5 + cfg.calibrate_steps:
            per_step = (time.perf_counter() - self.calib_start) / cfg.calibrate_steps
            eval_cost = 0.4 * per_step * len(self.test) / cfg.batch_size  # forward only, no backward
            per_epoch = per_step * self.steps_per_epoch + eval_cost
            state["epochs"] = max(1, int(cfg.minutes * 60 * 0.92 / per_epoch))
            self.log(f"calibrated: {per_step:.3f} s/step, ~{per_epoch / 60:.1f} min/epoch -> "
                     f"{state['epochs']} epochs in {cfg.minutes} min")

    def _set_lr(self, step: int) -> float:
        """The learning rate of ``step`` (:func:`lr_at`, capped after warm-up by ``state["lr_cap"]``, which
        it lowers), set on every parameter group."""
        cfg, state = self.cfg, self.state
        total = (state["epochs"] or 10 ** 6) * self.steps_per_epoch
        warmup = int(cfg.warmup_epochs * self.steps_per_epoch)
        lr = lr_at(step, total, warmup, cfg.lr)
        if step >= warmup:  # non-increasing after warm-up, whatever the refits of `total` do
            lr = min(lr, state.get("lr_cap", lr))
            state["lr_cap"] = lr
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    def _train_step(self, idx: np.ndarray, step: int, lr: float) -> torch.Tensor:
        """One optimizer step on the training images ``idx`` (B,), augmented into x (B, 3, 32, 32) with a
        generator seeded by (seed, step) so that a resumed run sees the same crops. Returns the () loss."""
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        x = augment(normalize(torch.from_numpy(self.train.images[idx])), cfg.pad, gen).to(cfg.device)
        y = torch.from_numpy(self.train.labels[idx]).to(cfg.device)
        with torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = self.model(pixel_values=x).logits
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step} (lr {lr:.2e})")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return loss

    def _end_epoch(self, loss: torch.Tensor, done: bool) -> None:
        """Evaluate, append to the history, refit the schedule (auto mode, unless ``done``), checkpoint,
        export to ``out``. Also runs when training stops mid-epoch: the export must hold the last weights."""
        cfg, state = self.cfg, self.state
        acc = evaluate(self.model, self.test, bf16=cfg.bf16)
        state["elapsed"] = time.perf_counter() - self.start
        state["history"].append({"epoch": state["step"] / self.steps_per_epoch, "step": state["step"],
                                 "test_accuracy": acc, "train_loss": float(loss.item()),
                                 "minutes": state["elapsed"] / 60})
        self.log(f"eval after step {state['step']} ({state['step'] / self.steps_per_epoch:.2f} epochs): "
                 f"test accuracy {acc:.4f}, {state['elapsed'] / 60:.1f} min")
        if cfg.epochs == 0 and not done:
            _replan(state, cfg, self.steps_per_epoch, self.log)
        self.checkpoint()
        record = {"config": asdict(cfg), "history": state["history"], "test_accuracy": acc,
                  "steps": state["step"], "epochs_done": state["step"] / self.steps_per_epoch,
                  "planned_epochs": state["epochs"], "train_images": len(self.train),
                  "test_images": len(self.test), "minutes": state["elapsed"] / 60}
        export_vit(self.model, self.out, record, image_mean=CIFAR10_MEAN, image_std=CIFAR10_STD)

    def checkpoint(self) -> None:
        """Save the weights, optimizer and state atomically, and restart the mid-epoch checkpoint clock."""
        _save_checkpoint(self.ckpt_path, {"model": self.model.state_dict(),
                                          "optimizer": self.opt.state_dict(), "state": self.state,
                                          "config": asdict(self.cfg)})
        self.last_ckpt = time.perf_counter()


def train_vit(cfg: ViTTrainConfig, out: str | Path, ckpt_dir: str | Path | None = None,
              train: ImageSet | None = None, test: ImageSet | None = None, max_steps: int | None = None,
              log=print) -> dict:
    """Train (or resume) the CIFAR-10 ViT and export it to ``out`` after every epoch's evaluation.

    Returns the training record (config, per-epoch history, final test accuracy, wall time).
    ``max_steps`` stops early (tests); the wall-clock budget ``cfg.minutes`` counts across resumes.
    """
    torch.set_num_threads(cfg.threads)
    ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else cache_root() / "vit_train"
    ckpt_path = ckpt_dir / "checkpoint.pt"
    train, test = _load_data(cfg, train, test)
    model = make_vit(cfg, len(train.class_names), train.class_names).to(cfg.device)
    opt = _make_optimizer(model, cfg)
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train)} training images < batch size {cfg.batch_size}")
    state = _initial_state(cfg, ckpt_path, model, opt, log)
    _Run(cfg, model, opt, train, test, state, ckpt_path, out, steps_per_epoch, log).loop(max_steps)
    final = state["history"][-1]["test_accuracy"] if state["history"] else float("nan")
    return {"config": asdict(cfg), "history": state["history"], "test_accuracy": final,
            "minutes": state["elapsed"] / 60, "steps": state["step"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m softsae_lib.vision.train_vit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="export folder (config.json, model.safetensors, README.md)")
    ap.add_argument("--ckpt-dir", default=None, help="checkpoint folder (default ~/.cache/softsae/vit_train)")
    defaults = ViTTrainConfig()
    for name, value in asdict(defaults).items():
        if name == "extra":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            kind = int if name in ("train_limit", "test_limit") else type(value)
            ap.add_argument(flag, type=kind, default=value)
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (tests)")
    args = vars(ap.parse_args(argv))
    out, ckpt, max_steps = args.pop("out"), args.pop("ckpt_dir"), args.pop("max_steps")
    record = train_vit(ViTTrainConfig(**args), out, ckpt, max_steps=max_steps)
    print(json.dumps({"test_accuracy": record["test_accuracy"], "minutes": record["minutes"],
                      "steps": record["steps"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
