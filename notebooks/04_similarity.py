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
# # 04 — Representational similarity
#
# Linear CKA (Kornblith et al. 2019) between the residual streams (`resid_post`) of MLA and GQA
# layer by layer at matched milestones (same tokens seen, same data order), the CKA of each layer
# to its own final state across training (when does a layer settle?), and RSA (Spearman
# correlation of correlation-distance RDMs) between MLA and GQA per layer. All on the same
# held-out documents of the `general` split.

# %% tags=["parameters"]
runs = ["../runs/paper-mini"]  # run directories, or directories of runs
smoke = False  # few milestones and documents (CI)
figures_dir = "../figures"

# %%
import matplotlib.pyplot as plt
import numpy as np

from labkit.figures import run_style, save_figure, use_style
from labkit.study import (
    cka_to_final,
    compare_runs,
    eval_sequences,
    find_runs,
    pick_milestones,
    pick_run,
    run_data_dir,
    shared_milestones,
)

use_style()
study = find_runs(runs)
documents, max_len = (8, 32) if smoke else (64, 128)
sequences = eval_sequences(run_data_dir(study[0].milestones[-1]), "general", documents, max_len)
print(f"{len(sequences)} documents, {sum(map(len, sequences)):,} tokens")
# MLA against GQA on each corpus both exist for
pairs = {}
for mix in sorted({r.mix for r in study}):
    mla, gqa = pick_run(study, "mla", mix), pick_run(study, "gqa", mix)
    if mla and gqa:
        matched = shared_milestones(mla, gqa)
        keep = {p.name for p in pick_milestones([a for a, _ in matched], 3 if smoke else 4)}
        pairs[mix] = (mla, gqa, [(a, b) for a, b in matched if a.name in keep])
compared = {mix: compare_runs(p, sequences, progress=True) for mix, (_, _, p) in pairs.items()}
print("MLA vs GQA pairs on:", list(pairs) or "none (needs one MLA and one GQA run per corpus)")

# %% [markdown]
# ## CKA layer × layer, MLA against GQA, at matched milestones

# %%
if pairs:
    cols = max(len(rows) for rows in compared.values())
    fig, axes = plt.subplots(
        len(pairs),
        cols,
        figsize=(2.6 * cols + 1, 2.5 * len(pairs) + 0.4),
        squeeze=False,
        layout="constrained",
    )
    for i, (mix, rows) in enumerate(compared.items()):
        for j, ax in enumerate(axes[i]):
            if j >= len(rows):
                ax.axis("off")
                continue
            img = ax.imshow(np.array(rows[j]["cka"]), vmin=0, vmax=1, origin="lower")
            ax.set_title(f"{mix}: {rows[j]['tokens'] / 1e6:.3g}M tokens", fontsize=8)
            ax.set_xlabel("GQA layer", fontsize=7)
            ax.set_ylabel("MLA layer", fontsize=7)
            ax.grid(False)
    fig.colorbar(img, ax=axes, shrink=0.7, label="linear CKA")
    sources = [m for _, _, p in pairs.values() for pair in p for m in pair]
    save_figure(fig, "04_cka_mla_vs_gqa", figures_dir, sources=sources)

# %% [markdown]
# ## CKA of each layer to its final state

# %%
to_final = {}
for r in study:
    chosen = pick_milestones(r.milestones, 3 if smoke else 8)
    to_final[r.name] = (chosen, cka_to_final(chosen, sequences, progress=True))
fig, axes = plt.subplots(1, len(study), figsize=(3 * len(study), 3), sharey=True, squeeze=False)
for ax, r in zip(axes[0], study, strict=True):
    rows = to_final[r.name][1]["rows"]
    tokens = [row["tokens"] for row in rows]
    values = np.array([row["cka"] for row in rows])
    for layer in range(values.shape[1]):
        ax.plot(
            tokens,
            values[:, layer],
            marker=".",
            color=plt.cm.viridis(layer / values.shape[1]),
            label=f"layer {layer}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("tokens")
    ax.set_title(r.label)
axes[0, 0].set_ylabel("CKA to the final milestone")
axes[0, 0].legend(fontsize=6)
fig.tight_layout()
save_figure(
    fig,
    "04_cka_to_final",
    figures_dir,
    sources=[m for chosen, _ in to_final.values() for m in chosen],
)

# %% [markdown]
# ## RSA between MLA and GQA, per layer, across training

# %%
if pairs:
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for mix, rows in compared.items():
        values = np.array([row["rsa"] for row in rows])
        tokens = [row["tokens"] for row in rows]
        for layer in range(values.shape[1]):
            ax.plot(
                tokens,
                values[:, layer],
                marker=".",
                linestyle=run_style("mla", mix)["linestyle"],
                color=plt.cm.viridis(layer / values.shape[1]),
                label=f"{mix}, layer {layer}",
            )
    ax.set_xscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel("RSA (Spearman of RDMs)")
    ax.set_title("MLA against GQA (solid: dense, dashed: control)")
    ax.legend(fontsize=6, ncol=2)
    save_figure(fig, "04_rsa_mla_vs_gqa", figures_dir, sources=sources)

# %%
for mix, rows in compared.items():
    diag = np.diag(np.array(rows[-1]["cka"]))
    print(
        f"{mix}: MLA vs GQA at {rows[-1]['tokens']:,} tokens, CKA of matching layers "
        + " ".join(f"{v:.2f}" for v in diag)
    )
