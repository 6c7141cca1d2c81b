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
# # SoftSAE on ViT image embeddings: does k̂ follow image complexity?
#
# Image embeddings (the CLS token after the encoder's final LayerNorm) are captured from a vision
# transformer through its own image processor into the project's activation cache. SoftSAE is trained
# first; TopK, BatchTopK and Matryoshka are trained at its realised mean L0 (matched sparsity). We then
# ask how the per-image budget k̂ is distributed, overall and per class; which images get the fewest and
# the most latents; and how k̂ relates to the local intrinsic dimension (LID) of the embedding cloud and
# to simple complexity proxies (compressed size, edge density, classifier entropy). Confidence intervals
# resample whole classes (cluster bootstrap), because images of one class share structure. SoftSAE is
# trained with several seeds (`seeds`); every k̂ correlation is given per seed and pooled. The direct
# test of "k̂ is an explanation length" counts, per image, the atoms of the TopK dictionary that
# orthogonal matching pursuit needs to reach a fixed relative error.
#
# **Training health.** Every model's training history is checked (`softsae_lib.training.health`); a
# result resting on a model that fails a check is reported as **inconclusive** (verdicts printed below
# and stored under `verdicts` in `metrics.json`).
#
# Encoders by profile: `smoke` a randomly initialised tiny ViT (tests the plumbing only, its numbers mean
# nothing); `local` the project's own small ViT trained on CIFAR-10 (`data/models/cifar10-vit`, see
# notebook 00 — no pretrained ViT can be downloaded on the offline machines); `paper` ViT-B/16 from the
# hub (`google/vit-base-patch16-224`; CLIP ViT-B/16 `openai/clip-vit-base-patch16` works the same way).
# Every figure names its encoder.

# %% tags=["parameters"]
profile = "smoke"  # smoke | local | paper (see softsae_lib/profiles.py)
out_dir = None  # folder for metrics and figures; None writes nothing

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

from softsae_lib.experiments.matched import association_table, per_sample_frame, summary_table
from softsae_lib.experiments.replicates import (
    data_passes,
    explanation_test,
    model_label,
    per_seed_associations,
    pooled_claim,
    readme_models,
    report_health,
    seed_frames,
    stacked_histories,
    train_matched_seeds,
    verdicts,
)
from softsae_lib.lid import local_id
from softsae_lib.plots import by_group, save_figure, scatter_with_trend
from softsae_lib.provenance import save_metrics
from softsae_lib.readme_results import section
from softsae_lib.reproduce import notebook_setup
from softsae_lib.saes import ARCHITECTURES
from softsae_lib.training.health import criteria_dict
from softsae_lib.vision.capture import describe, load_vision_encoder, random_vision_encoder
from softsae_lib.vision.experiment import embed, extreme_indices, image_grid, per_class_table
from softsae_lib.vision.images import load_cifar10
from softsae_lib.vision.proxies import complexity_proxies

P, out = notebook_setup("04_vit", profile, out_dir)
if P.threads:  # tiny tensors on shared cores: extra threads only add synchronisation
    torch.set_num_threads(P.threads)
P = P.replace(baselines=tuple(b for b in P.baselines if b in ARCHITECTURES))  # Matryoshka once it exists
timings = {}
t_all, cpu_all = time.perf_counter(), time.process_time()
P

# %% [markdown]
# ## 1. Encoder and images

# %%
if P.encoder.startswith("random-tiny"):
    encoder = random_vision_encoder(P.encoder.split("-")[-1], seed=P.seed)
else:
    encoder = load_vision_encoder(P.encoder, device=P.device or "cpu")
ENC = describe(encoder)
train_images = load_cifar10("train").stratified(P.n_train // 10, seed=P.seed)
test_images = load_cifar10("test").stratified(P.n_test // 10, seed=P.seed)
print(ENC)
print(f"train {len(train_images)} images, test {len(test_images)} images (CIFAR-10, stratified by class)")

# %%
t0 = time.perf_counter()
emb_train = embed(encoder, train_images, f"cifar10-train-{len(train_images)}-s{P.seed}", P.layer,
                  P.capture_batch)
emb_test = embed(encoder, test_images, f"cifar10-test-{len(test_images)}-s{P.seed}", P.layer,
                 P.capture_batch)
x_train, x_test = emb_train.x, emb_test.x
timings["embed_s"] = time.perf_counter() - t0
if emb_test.logits is not None:
    print(f"encoder's own test accuracy on these images: "
          f"{(emb_test.logits.argmax(1) == emb_test.labels).mean():.4f}")
print(f"embeddings: train {tuple(x_train.shape)}, test {tuple(x_test.shape)}")

# %% [markdown]
# ## 2. SoftSAE, then the baselines at its realised mean L0
# SoftSAE is trained once per seed of `seeds`; the baselines once, at the realised mean L0 of the
# first seed's SoftSAE, except TopK, trained once per seed at that budget: its decoder is the dictionary
# of the explanation-length test, so each seed replicates that whole test. With `workers > 1` the
# trainings run as single-threaded processes.

# %%
t0 = time.perf_counter()
runs = train_matched_seeds(x_train, x_test, P, (P.k,), P.k, P.seeds, baselines=P.baselines,
                           workers=P.workers, seed_baselines=("topk",))
models = runs.grid[P.k]
timings["train_s"] = time.perf_counter() - t0
passes = data_passes(P.steps, P.batch_size, len(x_train))
print(f"each SAE: {P.steps} steps × {P.batch_size} = {passes['samples_seen']:,} images seen, "
      f"{passes['epochs']:.1f} epochs over {passes['train_samples']:,} training images; "
      f"{len(runs.histories())} models in {timings['train_s']:.0f} s ({P.workers} worker(s))")
table = summary_table(models)
table

# %% [markdown]
# ### Training health
# One row per model and check (thresholds in `threshold`: `softsae_lib.training.health.HealthCriteria`),
# then one row per model with the measured values; labels `<arch> k=<SoftSAE target k> s<seed>`.

# %% [markdown]
# Reading the checks: `finite` takes the largest batch FVU over *all* logged steps. TopK-family models
# start with k annealed down from d and a random decoder, so their batch FVU can exceed the threshold in
# the first few steps (see `histories.csv`) without any later divergence; the check is reported as it
# stands and still makes the results that rest on such a model inconclusive. `converged` asks for a
# plateau of the training objective's FVU on 2048 held-out test images over the last 20% of the
# constant-learning-rate steps (unseen images; the training batches hold the same images every epoch).

# %%
report, health, _ = report_health(runs.histories(), f"Training curves — encoder: {ENC}",
                                  out / "training_curves.png" if out else None)
plt.show()
health

# %% [markdown]
# ## 3. The distribution of k̂, overall and per class

# %%
labels = emb_test.labels
class_names = test_images.class_names
lid = local_id(x_test, P.lid_k, duplicates="exclude")
lid_cols = {f"lid_{name}": v.numpy() for name, v in lid.items()}  # lid_mle, lid_twonn, lid_lpca
proxies = complexity_proxies(test_images.images, emb_test.logits)
frame = per_sample_frame(models, label=labels, **lid_cols, norm=x_test.norm(dim=1).numpy(), **proxies)
frame["class"] = [class_names[i] for i in labels]
sparsity_cols = ["soft_k_hat", "soft_l0"] + [f"{b}_l0" for b in P.baselines]
per_class = per_class_table(frame, sparsity_cols, "label", class_names)
per_class

# %%
fig, axes = plt.subplots(1, 2, figsize=(15, 4), gridspec_kw={"width_ratios": [1, 2.2]})
axes[0].hist(frame["soft_k_hat"], bins=50, alpha=0.7, label="SoftSAE k̂")
axes[0].hist(frame["soft_l0"], bins=np.arange(frame["soft_l0"].max() + 2) - 0.5, alpha=0.5,
             label="SoftSAE L0 = ⌊k̂⌋")
if "batch_topk_l0" in frame:
    axes[0].hist(frame["batch_topk_l0"], bins=np.arange(frame["batch_topk_l0"].max() + 2) - 0.5, alpha=0.4,
                 label="BatchTopK L0 (matched)")
axes[0].axvline(P.k, color="k", ls=":", label=f"target k = {P.k}")
axes[0].set(xlabel="active latents per image", ylabel="images", title="per-image budget")
axes[0].legend(fontsize=7)
by_group(axes[1], frame["class"], frame["soft_k_hat"], "class", "SoftSAE k̂", "k̂ per class")
axes[1].tick_params(axis="x", labelrotation=30)
fig.suptitle(f"k̂ on CIFAR-10 test embeddings — encoder: {ENC}", fontsize=9)
if out:
    save_figure(fig, out / "khat_distribution.png")
plt.show()

# %% [markdown]
# ## 4. The images with the smallest and the largest budget

# %%
low, high = extreme_indices(frame["soft_k_hat"].to_numpy(), P.grid_n, seed=P.seed)
for name, idx in (("lowest", low), ("highest", high)):
    caps = [f"{frame['class'][i]}\nk̂={frame['soft_k_hat'][i]:.1f}" for i in idx]
    fig = image_grid(test_images.images[idx], caps,
                     f"{name} SoftSAE k̂ of {len(frame)} test images — encoder: {ENC}")
    if out:
        save_figure(fig, out / f"grid_{name}_khat.png")
    plt.show()

# %% [markdown]
# ## 5. k̂ against LID and complexity proxies (cluster-bootstrap CIs over classes)
# LID is estimated on the held-out embeddings themselves (MLE, local TwoNN; K neighbours; exact
# duplicates excluded from each other's neighbourhoods). The same statistics are given for every
# baseline's L0: TopK's is constant by construction, BatchTopK's and Matryoshka's vary through their
# global inference thresholds.

# %%
targets = [*lid_cols, "png_bytes", "jpeg_bytes", "edge_density", "mean_gradient", "norm"]
targets += ["classifier_entropy"] if "classifier_entropy" in frame else []
assoc = association_table(frame, sparsity_cols, targets, clusters="label", n_boot=P.n_boot, seed=P.seed)
assoc[["kappa", "target", "n", "spearman", "spearman_ci_low", "spearman_ci_high", "pearson", "kendall",
       "n_clusters", "share_at_min", "share_at_max", "note"]]

# %%
fig, axes = plt.subplots(1, 4, figsize=(18, 4))
scatter_with_trend(axes[0], frame["lid_mle"], frame["soft_k_hat"], f"LID (MLE, K={P.lid_k})", "SoftSAE k̂",
                   "k̂ vs LID")
scatter_with_trend(axes[1], frame["png_bytes"], frame["soft_k_hat"], "PNG size (bytes)", "SoftSAE k̂",
                   "k̂ vs compressed size")
scatter_with_trend(axes[2], frame["edge_density"], frame["soft_k_hat"], "edge density (Sobel)", "SoftSAE k̂",
                   "k̂ vs edge density")
if "classifier_entropy" in frame:
    scatter_with_trend(axes[3], frame["classifier_entropy"], frame["soft_k_hat"], "classifier entropy (nats)",
                       "SoftSAE k̂", "k̂ vs classifier entropy")
else:
    axes[3].axis("off")
fig.suptitle(f"k̂ vs complexity, CIFAR-10 test — encoder: {ENC}", fontsize=9)
if out:
    save_figure(fig, out / "khat_vs_complexity.png")
plt.show()

# %% [markdown]
# ### Every SoftSAE seed
# ρ(k̂, target) once per seed and pooled (within-seed ranks stacked; the bootstrap resamples classes).

# %%
all_rows = np.arange(len(frame))
by_seed = seed_frames(runs.seeds, all_rows, **{t: frame[t].to_numpy() for t in targets}, label=labels)
seed_assoc = per_seed_associations(by_seed, "soft_k_hat", targets, "label", n_boot=P.n_boot, seed=P.seed)
seed_assoc[["target", "seed", "n", "spearman", "spearman_ci_low", "spearman_ci_high", "share_at_min",
            "share_at_max", "note"]]

# %% [markdown]
# How to read this: a positive ρ(k̂, LID) with a CI that excludes 0 says images in locally
# higher-dimensional regions of the embedding space get more latents. With 10 classes as clusters the
# CIs are wide; per-class means (table above) show whether the effect is mostly between classes.
# For `smoke` the encoder is random and the numbers carry no meaning.

# %% [markdown]
# ## 6. Is k̂ an explanation length?
# For `explain_n` test images, orthogonal matching pursuit on the same seed's TopK decoder (trained at
# the matched budget) counts the atoms each embedding needs to reach a fixed relative error
# (`softsae_lib.experiments.replicates.explanation_lengths`; default tolerance: the median error at the
# matched budget; images needing more than `max_atoms` are censored at max_atoms + 1). ρ(k̂, atoms)
# per seed and pooled; BatchTopK's L0 and the LID estimates get the same test.

# %%
ex_rows = np.sort(np.random.default_rng(P.seed + 1).choice(len(frame), min(P.explain_n, len(frame)),
                                                           replace=False))
t0 = time.perf_counter()
ex = explanation_test(runs.seed_models("topk"), x_test, ex_rows, runs.seeds, labels[ex_rows],
                      {c: frame[c].to_numpy()[ex_rows] for c in ("batch_topk_l0", *lid_cols)}, P)
timings["explanation_s"] = time.perf_counter() - t0
ex_frames = ex.frames
print(f"explanation length on {len(ex_rows)} images: {ex.info} — encoder: {ENC}")
display(ex.per_seed[["seed", "n", "spearman", "spearman_ci_low", "spearman_ci_high", "note"]])
ex.others[["kappa", "target", "n", "spearman", "spearman_ci_low", "spearman_ci_high", "note"]]

# %%
fig, ax = plt.subplots(figsize=(5, 4))
scatter_with_trend(ax, ex_frames[P.seed]["explanation_length"], ex_frames[P.seed]["soft_k_hat"],
                   "atoms OMP needs (TopK decoder)", "SoftSAE k̂", f"k̂ vs explanation length (seed {P.seed})")
fig.suptitle(f"tolerance {ex.info['tolerance']:.3g} — encoder: {ENC}", fontsize=9)
if out:
    save_figure(fig, out / "explanation_length.png")
plt.show()

# %% [markdown]
# ## 7. Verdicts
# A result is conclusive only when every model it rests on passed every health check.

# %%
seed_labels = [model_label("soft", P.k, s) for s in runs.seeds]
verdict = verdicts(health, {
    "fidelity": list(health["model"]),
    "khat_vs_lid": seed_labels,
    "khat_vs_complexity": seed_labels,
    "explanation_length": [*seed_labels, *(model_label("topk", P.k, s) for s in runs.seeds)],
})
unhealthy = health.loc[~health["healthy"], ["model", "failed"]]
print(f"{ENC}\nverdicts: {verdict}")
print("unhealthy models:\n" + (unhealthy.to_string(index=False) if len(unhealthy) else "none"))

# %% [markdown]
# ## 8. Results file

# %%
timings["total_s"] = time.perf_counter() - t_all
timings["process_cpu_s"] = time.process_time() - cpu_all  # CPU time of this process's threads
n_seeds = f"{len(runs.seeds)} SoftSAE seeds"
others = assoc.set_index(["kappa", "target"])
readme = section(
    "Vision (`04_vit`)",
    f"{ENC}; CLS embeddings of {len(train_images)} training / {len(test_images)} test images, {P.steps} steps "
    f"of batch {P.batch_size} ({passes['epochs']:.1f} epochs), F = {P.dict_size}, k = {P.k}; SoftSAE seeds "
    f"{', '.join(map(str, runs.seeds))}; baselines at SoftSAE's realised mean L0, seed 0 "
    f"(TopK also at the other seeds); class-bootstrap 95% CIs.",
    [pooled_claim(seed_assoc, "soft_k_hat", "lid_mle", "Spearman(k̂, per-image MLE LID)", verdict["khat_vs_lid"],
                  n_seeds, "BatchTopK L0: {:.2f}, Matryoshka L0: {:.2f}".format(
                      *[others.loc[(f"{b}_l0", "lid_mle"), "spearman"] for b in ("batch_topk", "matryoshka")])),
     pooled_claim(seed_assoc, "soft_k_hat", "classifier_entropy", "Spearman(k̂, classifier entropy)",
                  verdict["khat_vs_complexity"], n_seeds),
     pooled_claim(seed_assoc, "soft_k_hat", "png_bytes", "Spearman(k̂, PNG size)", verdict["khat_vs_complexity"],
                  n_seeds),
     pooled_claim(ex.per_seed, "soft_k_hat", "explanation_length", "Spearman(k̂, TopK explanation length)",
                  verdict["explanation_length"], f"{len(runs.seeds)} SoftSAE seeds, each with its own TopK dictionary")],
    readme_models(table, health, lambda r: P.k, P.seed))
metrics = {
    "params": P, "encoder": ENC, "n_train": len(train_images), "n_test": len(test_images),
    "encoder_test_accuracy": (None if emb_test.logits is None
                              else float((emb_test.logits.argmax(1) == emb_test.labels).mean())),
    "models": table, "association": assoc, "seed_association": seed_assoc,
    "training": {**passes, "steps": P.steps, "batch_size": P.batch_size, "workers": P.workers},
    "health": report, "health_summary": health, "health_criteria": criteria_dict(), "verdicts": verdict,
    "explanation_length": {**ex.info, "per_seed": ex.per_seed, "others": ex.others},
    "timings": timings,
    "per_class": per_class.reset_index(names="class"),
    "lid_mle_mean": float(frame["lid_mle"].mean()), "readme": readme,
}
if out:
    save_metrics(out / "metrics.json", metrics)
    stacked_histories(runs.histories()).to_csv(out / "histories.csv", index=False)
    frame.to_csv(out / "per_sample.csv", index=False)
per = seed_assoc[seed_assoc["target"] == "lid_mle"]
print(f"{ENC}: Spearman(k̂, LID MLE) per seed: "
      + ", ".join(f"{r.seed}: {r.spearman:.3f} [{r.spearman_ci_low:.3f}, {r.spearman_ci_high:.3f}]"
                  for r in per.itertuples())
      + f" ({verdict['khat_vs_lid']}); total {timings['total_s']:.0f} s")
