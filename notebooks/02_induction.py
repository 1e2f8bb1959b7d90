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
# # 02 — Induction heads
#
# Induction and previous-token scores per head across milestones, the phase change (the
# milestone where the best head's induction score rises fastest) against the in-context-learning
# score (loss at a late token minus loss at an early one; more negative = more in-context
# learning), and the attention patterns of the top induction heads on a repeated random sequence.
# The scores are `labkit.analysis.induction`'s, applied to each milestone by `labkit.study`.

# %% tags=["parameters"]
runs = ["../runs/paper-mini"]  # run directories, or directories of runs
smoke = False  # few milestones and documents (CI)
figures_dir = "../figures"

# %%
import matplotlib.pyplot as plt
import numpy as np

from labkit.figures import run_style, save_figure, use_style
from labkit.study import (
    attention_on_repeat,
    find_runs,
    icl_over_milestones,
    induction_over_milestones,
    pick_milestones,
)

use_style()
study = find_runs(runs)
n_milestones = 3 if smoke else 6
seq_len, batch = (16, 4) if smoke else (32, 8)
chosen = {r.name: pick_milestones(r.milestones, n_milestones) for r in study}
induction = {
    r.name: induction_over_milestones(chosen[r.name], seq_len, batch, progress=True) for r in study
}
early, late = (8, 60) if smoke else (16, 200)  # token positions of the ICL score
icl = {
    r.name: icl_over_milestones(chosen[r.name], "general", 8 if smoke else 32, early, late, True)
    for r in study
}
sources = [m for ms in chosen.values() for m in ms]

# %% [markdown]
# ## Scores per head across training

# %%
for kind, title in [("induction", "induction score"), ("previous_token", "previous-token score")]:
    cols = max(len(ms) for ms in chosen.values())
    # One colour scale per figure, up to the largest score seen (at least 0.1): weak heads stay
    # visible, and the colour bar says how weak they are.
    top = max(0.1, max(np.max(row[kind]) for v in induction.values() for row in v["milestones"]))
    fig, axes = plt.subplots(
        len(study),
        cols,
        figsize=(1.9 * cols + 1, 1.7 * len(study) + 0.8),
        squeeze=False,
        layout="constrained",
    )
    for i, r in enumerate(study):
        rows = induction[r.name]["milestones"]
        for j, ax in enumerate(axes[i]):
            if j >= len(rows):
                ax.axis("off")
                continue
            img = ax.imshow(np.array(rows[j][kind]), vmin=0, vmax=top, aspect="auto")
            ax.set_title(f"{rows[j]['tokens'] / 1e6:.3g}M tokens", fontsize=7)
            ax.set_xticks(range(r.model.n_heads))
            ax.set_yticks(range(r.model.n_layers))
            ax.tick_params(labelsize=6)
            ax.grid(False)
        axes[i, 0].set_ylabel(f"{r.label}\nlayer", fontsize=7)
    fig.colorbar(img, ax=axes, shrink=0.6, label=title)
    fig.suptitle(f"{title.capitalize()} per head (heads across, layers down)")
    save_figure(fig, f"02_{kind}_heads", figures_dir, sources=sources)

# %% [markdown]
# ## The phase change against in-context learning

# %%
fig, (ax_ind, ax_icl, ax_copy) = plt.subplots(1, 3, figsize=(12, 3.4))
for r in study:
    rows = induction[r.name]["milestones"]
    style = run_style(r.attention, r.mix)
    tokens = [row["tokens"] for row in rows]
    ax_ind.plot(tokens, [row["max_induction"] for row in rows], marker=".", label=r.label, **style)
    change = induction[r.name].get("phase_change")
    if change:
        ax_ind.axvspan(*change["steepest_rise"], color=style["color"], alpha=0.08)
    ax_icl.plot(
        [x["tokens"] for x in icl[r.name]],
        [x["icl_score"] for x in icl[r.name]],
        marker=".",
        **style,
    )
    ax_copy.plot(tokens, [row["loss_first_copy"] for row in rows], marker=".", alpha=0.4, **style)
    ax_copy.plot(tokens, [row["loss_second_copy"] for row in rows], marker="o", **style)
ax_ind.set_title("best head's induction score\n(shaded: steepest rise)")
ax_icl.set_title(
    f"in-context-learning score\n(loss at token {icl[study[0].name][0]['late']} "
    f"minus token {icl[study[0].name][0]['early']})"
)
ax_copy.set_title("loss on repeated random tokens\n(faint: first copy, bold: second copy)")
for ax in (ax_ind, ax_icl, ax_copy):
    ax.set_xscale("log")
    ax.set_xlabel("tokens")
ax_ind.legend()
fig.tight_layout()
save_figure(fig, "02_phase_change", figures_dir, sources=sources)

# %%
print(f"{'run':<14}{'phase change (steepest rise, tokens)':>40}{'final max induction':>22}")
for r in study:
    change = induction[r.name].get("phase_change", {}).get("steepest_rise")
    final = induction[r.name]["milestones"][-1]["max_induction"]
    print(f"{r.name:<14}{str(change):>40}{final:>22.3f}")

# %% [markdown]
# ## Attention of the top induction heads on a repeated random sequence
#
# The sequence is a random token string followed by itself. An induction head, at a token of the
# second copy, attends to the token right after that token's first occurrence: the off-diagonal
# stripe one position right of the copy offset.

# %%
top_k = 3
fig, axes = plt.subplots(len(study), top_k, figsize=(2.6 * top_k, 2.5 * len(study)), squeeze=False)
for i, r in enumerate(study):
    rep = attention_on_repeat(r.milestones[-1], seq_len=16)
    order = np.argsort(rep["induction"].ravel())[::-1][:top_k]
    for ax, flat in zip(axes[i], order, strict=True):
        layer, head = divmod(int(flat), rep["induction"].shape[1])
        ax.imshow(rep["patterns"][layer, head], vmin=0, vmax=1, cmap="Blues")
        ax.set_title(
            f"{r.label}: L{layer}H{head} ({rep['induction'][layer, head]:.2f})", fontsize=7
        )
        ax.set_xlabel("key position", fontsize=7)
        ax.set_ylabel("query position", fontsize=7)
        ax.grid(False)
fig.suptitle("Top induction heads at the final milestone")
fig.tight_layout()
save_figure(fig, "02_top_heads", figures_dir, sources=[r.milestones[-1] for r in study])
