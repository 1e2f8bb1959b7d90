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
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 — Training
#
# Loss against tokens for the study's runs (MLA in blue, GQA in red; solid: dense corpus,
# dashed: control corpus), validation loss on each held-out split, the learning rate, the gradient
# norm before and after clipping, throughput, and the final loss against the KV-cache bytes each
# token costs at inference. Everything comes from each run's `metrics.jsonl` and `config.json`.
#
# Throughput depends on the machine and its load: that figure is the one figure here that a
# rerun does not reproduce byte for byte.

# %% tags=["parameters"]
runs = ["../runs/paper-mini"]  # run directories, or directories of runs
smoke = False  # few milestones and documents (CI)
figures_dir = "../figures"

# %%
import matplotlib.pyplot as plt
import numpy as np

from labkit.figures import run_style, save_figure, use_style
from labkit.study import find_runs

use_style()
study = find_runs(runs)
logs = {r.name: r.metrics() for r in study}
for r in study:
    train, evals = logs[r.name]
    print(
        f"{r.name:<14}{r.label:<16}{r.model.num_params():>10,} params  "
        f"{train[-1]['tokens']:>11,} tokens  final train loss {train[-1]['loss']:.3f}"
    )


def column(rows, key):
    return np.array([row.get(key, np.nan) for row in rows], dtype=float)


# %% [markdown]
# ## Loss against tokens

# %%
splits = sorted(
    {
        key[4:]
        for r in study
        for row in logs[r.name][1]
        for key in row
        if key.startswith("val/") and key != "val/mean"
    }
)
n_rows = (len(splits) + 3) // 3
fig, axes = plt.subplots(n_rows, 3, figsize=(10.5, 3 * n_rows), sharex=True, squeeze=False)
axes = axes.ravel()
for ax in axes[1 + len(splits) :]:
    ax.axis("off")
for r in study:
    train, evals = logs[r.name]
    style = run_style(r.attention, r.mix)
    axes[0].plot(column(train, "tokens"), column(train, "loss"), label=r.label, **style)
    for ax, split in zip(axes[1 : 1 + len(splits)], splits, strict=True):
        ax.plot(column(evals, "tokens"), column(evals, f"val/{split}"), marker=".", **style)
axes[0].set_title("training loss")
axes[0].legend()
for ax, split in zip(axes[1 : 1 + len(splits)], splits, strict=True):
    ax.set_title(f"validation: {split}")
for ax in axes[: 1 + len(splits)]:
    ax.set_xscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel("cross-entropy (nats)")
fig.tight_layout()
save_figure(fig, "01_loss", figures_dir, sources=[r.path for r in study])

# %% [markdown]
# ## Learning rate and gradient norm

# %%
fig, (ax_lr, ax_gn) = plt.subplots(1, 2, figsize=(10, 3.4))
for r in study:
    train, _ = logs[r.name]
    style = run_style(r.attention, r.mix)
    tokens = column(train, "tokens")
    ax_lr.plot(tokens, column(train, "lr"), label=r.label, **style)
    ax_gn.plot(tokens, column(train, "grad_norm"), label=f"{r.label} before clipping", **style)
    ax_gn.plot(tokens, column(train, "grad_norm_clipped"), alpha=0.5, lw=3, color=style["color"])
clip = study[0].train["train"]["grad_clip"]
ax_gn.axhline(clip, color="black", lw=0.8, ls=":", label=f"clip at {clip}")
ax_lr.set_title("learning rate (warmup, cosine to 10 %)")
ax_gn.set_title("gradient norm: thin before clipping, thick after")
ax_gn.set_yscale("log")
for ax in (ax_lr, ax_gn):
    ax.set_xlabel("tokens")
ax_lr.legend()
ax_gn.legend(fontsize=6)
fig.tight_layout()
save_figure(fig, "01_lr_gradnorm", figures_dir, sources=[r.path for r in study])

# %% [markdown]
# ## Throughput (machine-dependent)

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
for r in study:
    train, _ = logs[r.name]
    ax.plot(
        column(train, "tokens"),
        column(train, "tokens_per_s"),
        label=r.label,
        **run_style(r.attention, r.mix),
    )
ax.set_xlabel("tokens")
ax.set_ylabel("tokens / s")
ax.set_ylim(bottom=0)
ax.set_title("Training throughput (depends on the machine and its load)")
ax.legend()
save_figure(fig, "01_throughput", figures_dir, sources=[r.path for r in study])

# %% [markdown]
# ## Final loss against KV-cache bytes per token
#
# MLA caches the latent `c_kv` plus one RoPE key per layer; GQA caches K and V of its KV heads.
# The x axis is the cache a token costs at inference over all layers in bf16; the y axis the mean
# validation loss at the end of training.

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.6))
for r in study:
    _, evals = logs[r.name]
    final = evals[-1]["val/mean"] if evals else np.nan
    style = run_style(r.attention, r.mix)
    marker = "o" if r.mix == "dense" else "s"
    ax.scatter(
        r.model.kv_cache_bytes_per_token(),
        final,
        color=style["color"],
        marker=marker,
        s=60,
        label=r.label,
    )
    ax.annotate(
        r.name,
        (r.model.kv_cache_bytes_per_token(), final),
        fontsize=7,
        xytext=(4, 4),
        textcoords="offset points",
    )
ax.set_xscale("log")
ax.set_xlabel("KV-cache bytes per token (all layers, bf16)")
ax.set_ylabel("final mean validation loss")
ax.set_title("Loss against inference memory")
ax.legend()
save_figure(fig, "01_loss_vs_kv_cache", figures_dir, sources=[r.path for r in study])

# %%
print(f"{'run':<14}{'KV B/tok':>10}{'final val mean':>16}")
for r in study:
    _, evals = logs[r.name]
    final = evals[-1]["val/mean"] if evals else float("nan")
    print(f"{r.name:<14}{r.model.kv_cache_bytes_per_token():>10,}{final:>16.3f}")
