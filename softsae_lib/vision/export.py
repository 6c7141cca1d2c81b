"""Export a trained ViT as a normal Hugging Face folder: fp16 safetensors, image processor, model card."""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path

import torch

from softsae_lib.atomic import atomic_write_text


def _model_card(record: dict, name: str) -> str:
    cfg = record["config"]
    hist = record.get("history", [])
    rows = "\n".join(f"| {h['epoch']:.2f} | {h['step']} | {h['minutes']:.1f} | {h['test_accuracy']:.4f} |"
                     for h in hist)
    limits = ""
    if cfg.get("train_limit") or cfg.get("test_limit"):
        limits = (f"\n**Subset run**: train_limit={cfg.get('train_limit')}, "
                  f"test_limit={cfg.get('test_limit')} (not the full recipe).\n")
    return f"""# {name}: a small ViT trained on CIFAR-10 by the softsae project

No pretrained ViT weights can be obtained on the project's offline machines, so this encoder was trained
from scratch. It is a plain `transformers` `ViTForImageClassification`; load it with
`softsae_lib.vision.capture.load_vision_encoder("{name}")` or
`ViTForImageClassification.from_pretrained(path)`
and preprocess with the folder's `ViTImageProcessor` (32x32, CIFAR-10 mean/std).
{limits}
## Result
- **Test accuracy (CIFAR-10 test, {record['test_images']} images): {record['test_accuracy']:.4f}**
- Training: {record['steps']} steps = {record['epochs_done']:.2f} epochs of a planned
  {record['planned_epochs']} (cosine schedule length), {record['minutes']:.1f} minutes wall clock on
  {cfg['threads']} CPU thread(s).

## Data
CIFAR-10 (Krizhevsky 2009) train split, {record['train_images']} images, read from the JPEG re-encodings in
the project's `data/images/cifar10-jpeg.tar.gz` (lossy JPEG, so slightly different from the original
PNG/pickle release). Research use only, as CIFAR-10 itself.

## Architecture
Patch {cfg['patch']} on 32x32 inputs ({(32 // cfg['patch']) ** 2} patches + CLS), width {cfg['width']},
depth {cfg['depth']}, {cfg['heads']} heads, MLP {cfg['mlp_ratio']}x width; classifier on the final CLS token.
Weights stored as fp16 safetensors.

## Recipe
AdamW (peak lr {cfg['lr']}, weight decay {cfg['weight_decay']} on matrices only, betas 0.9/0.999), batch
{cfg['batch_size']}, {cfg['warmup_epochs']} epoch(s) linear warm-up then cosine decay to 0, label smoothing
{cfg['label_smoothing']}, gradient clipping at 1.0, augmentation: random crop with {cfg['pad']}-pixel zero
padding and horizontal flip. Seed {cfg['seed']}; bf16 autocast: {cfg['bf16']}. With `--epochs 0` (auto)
the cosine length is first fixed from the measured step time, then refitted after every epoch to the
pace of the last one and the budget left ({cfg['minutes']:g} min); after warm-up the learning rate never
rises, so a longer refit holds the current rate instead of raising it. A rerun with `--epochs N` uses a
plain cosine over N epochs (not bit-identical to an auto run whose length was refitted).

## Evaluation history
| epochs | step | minutes | test accuracy |
|---|---|---|---|
{rows}

## Retrain
```
python -m softsae_lib.vision.train_vit --out data/models/{name} --minutes {cfg['minutes']:g} \\
    --threads {cfg['threads']} --width {cfg['width']} --depth {cfg['depth']} --heads {cfg['heads']} \\
    --mlp-ratio {cfg['mlp_ratio']} --patch {cfg['patch']} --lr {cfg['lr']} \\
    --epochs {record['planned_epochs']} --seed {cfg['seed']}
```
(checkpoints go to `~/.cache/softsae/vit_train/`; rerunning the same command resumes). On a GPU-less
machine the run is CPU bound; notebook `00_train_vit_cifar10` (profile `paper`) runs the recipe for longer.
"""


def export_vit(model: torch.nn.Module, out: str | Path, record: dict,
               image_mean: tuple[float, ...], image_std: tuple[float, ...]) -> Path:
    """Write ``model`` (fp16) + ``ViTImageProcessor`` + model card + ``training.json`` into ``out``.

    The folder is built beside ``out`` and swapped in, so a reader never sees a half-written export.
    """
    from transformers import ViTImageProcessor

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    size = model.config.image_size
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the export is meant to be shared
    try:
        half = copy.deepcopy(model).to("cpu", torch.float16)
        half.save_pretrained(tmp, safe_serialization=True)
        ViTImageProcessor(do_resize=True, size={"height": size, "width": size}, do_rescale=True,
                          do_normalize=True, image_mean=list(image_mean),
                          image_std=list(image_std)).save_pretrained(tmp)
        atomic_write_text(tmp / "README.md", _model_card(record, out.name))
        atomic_write_text(tmp / "training.json", json.dumps(record, indent=1))
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out
