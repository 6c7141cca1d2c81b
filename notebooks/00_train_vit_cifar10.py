# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The project's own CIFAR-10 ViT
#
# No pretrained ViT, CLIP or DINO weights can be downloaded on the project's offline machines, so the
# vision notebooks' offline encoder is a small ViT trained here from scratch on CIFAR-10
# (`softsae_lib.vision.train_vit`: patch 4 on 32x32 images, random crop + flip, AdamW with warm-up and
# cosine decay, label smoothing). It is a plain `transformers` `ViTForImageClassification` with a
# `ViTImageProcessor`, shipped in fp16 in `data/models/cifar10-vit` with a model card, so the capture
# code loads it exactly like a hub ViT.
#
# Profiles: `smoke` trains a toy ViT for a few steps on a small CIFAR subset (seconds); `local`
# evaluates the shipped weights on the full test split and shows their training record (it does not
# retrain: the shipped run took about two hours of one CPU core); `paper` runs a longer recipe
# (width 192, 9 layers, 200 epochs) on a GPU.

# %% tags=["parameters"]
profile = "smoke"  # smoke | local | paper (see softsae_lib/profiles.py)
out_dir = None  # folder for metrics and figures; None writes nothing

# %%
import json
import tempfile
from dataclasses import asdict, fields
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from softsae_lib.plots import save_figure
from softsae_lib.provenance import save_metrics
from softsae_lib.readme_results import claim, section
from softsae_lib.reproduce import notebook_setup
from softsae_lib.vision.capture import describe, embed_batch, load_vision_encoder, resolve_encoder_path
from softsae_lib.vision.images import cache_root, load_cifar10
from softsae_lib.vision.train_vit import ViTTrainConfig, train_vit

P, out = notebook_setup("00_train_vit_cifar10", profile, out_dir)
torch.set_num_threads(P.threads)
P

# %% [markdown]
# ## 1. Train (smoke, paper) or take the shipped weights (local)

# %%
if P.mode == "train":
    names = {f.name for f in fields(ViTTrainConfig)}
    cfg = ViTTrainConfig(**{k: v for k, v in asdict(P).items() if k in names and v is not None})
    work = Path(out) if out else Path(tempfile.mkdtemp())
    ckpt = work / "checkpoints" if profile == "smoke" else cache_root() / f"vit_train_{profile}"
    train_vit(cfg, work / "model", ckpt)
    model_dir = work / "model"
else:
    model_dir = Path(resolve_encoder_path(P.model))
record = json.loads((model_dir / "training.json").read_text())  # written with every export
encoder = load_vision_encoder(model_dir)
ENC = describe(encoder)
n_params = sum(p.numel() for p in encoder.model.parameters())
weights_mb = (model_dir / "model.safetensors").stat().st_size / 2**20
print(ENC)
print(f"{n_params / 1e6:.2f}M parameters, weights file {weights_mb:.1f} MB (fp16); "
      f"accuracy recorded at export: {record['test_accuracy']:.4f}")

# %% [markdown]
# ## 2. Test accuracy, recomputed through the model's own image processor
# The exported processor must reproduce the normalisation used in training; recomputing the accuracy
# from raw images through it (rather than trusting the model card) checks the whole loading path.

# %%
test = load_cifar10("test")
limit = record["config"].get("test_limit")
if limit:
    test = test.subset(np.sort(np.random.default_rng(record["config"]["seed"]).permutation(len(test))[:limit]))
pred = np.concatenate([embed_batch(encoder, test.images[i:i + 500])["logits"].argmax(1).numpy()
                       for i in range(0, len(test), 500)])
accuracy = float((pred == test.labels).mean())
confusion = np.zeros((10, 10), dtype=int)
np.add.at(confusion, (test.labels, pred), 1)
per_class = {c: float(confusion[i, i] / max(1, confusion[i].sum())) for i, c in enumerate(test.class_names)}
print(f"test accuracy {accuracy:.4f} on {len(test)} images (model card: {record['test_accuracy']:.4f})")
per_class

# %%
hist = record["history"]
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
axes[0].plot([h["epoch"] for h in hist], [h["test_accuracy"] for h in hist], "o-")
axes[0].set(xlabel="epoch", ylabel="test accuracy", title="training curve (evaluated every epoch)")
im = axes[1].imshow(confusion, cmap="Blues")
axes[1].set_xticks(range(10), test.class_names, rotation=60, fontsize=7)
axes[1].set_yticks(range(10), test.class_names, fontsize=7)
axes[1].set(xlabel="predicted", ylabel="true", title=f"confusion, accuracy {accuracy:.3f}")
fig.colorbar(im, ax=axes[1], label="test images")
fig.suptitle(f"encoder: {ENC}", fontsize=9)
if out:
    save_figure(fig, out / "vit_training.png")
plt.show()

# %% [markdown]
# ## 3. Results file

# %%
metrics = {"params": P, "encoder": ENC, "model_dir": str(model_dir), "test_accuracy": accuracy,
           "n_test": len(test), "card_test_accuracy": record["test_accuracy"], "per_class_accuracy": per_class,
           "n_params": n_params, "weights_mb": weights_mb, "epochs_done": record["epochs_done"],
           "train_minutes": record["minutes"], "history": hist,
           "readme": section("The CIFAR-10 ViT behind notebook 04 (`00_train_vit_cifar10`)",
                             f"{ENC}; {P.mode} mode, {n_params} parameters, {record['epochs_done']} epochs "
                             f"in {record['minutes']:.0f} min when it was trained.",
                             [claim(f"test accuracy on {len(test)} CIFAR-10 test images", accuracy,
                                    verdict="conclusive", judged_against="10% chance",
                                    rests_on="one trained model (no SAE)")])}
if out:
    save_metrics(out / "metrics.json", metrics)
print(f"{ENC}: test accuracy {accuracy:.4f}")
