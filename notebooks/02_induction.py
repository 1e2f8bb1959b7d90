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
# The positive control of Olsson et al. (2022): on a random token sequence followed by itself,
# an induction head at a token of the second copy attends to the token right after that token's
# first occurrence (TransformerLens `head_detector` semantics: the mean attention on that stripe),
# and a model with induction heads predicts the second copy far better than the first. Olsson et
# al. find the heads form in a sudden phase change early in training, at the same time as the
# in-context-learning score (loss late in a context minus loss early in it) drops.
#
# Every milestone of each main run (one per attention kind and corpus) is scored. Two reference
# levels are drawn: the 0.3 threshold commonly used to call a head an induction head, and the
# score of a head that attends uniformly over its causal window. A phase change is marked only
# where the best head crosses the threshold between two milestones; a run that never crosses has
# no phase change, whatever its curve's steepest rise. The numbers go to `results.json`
# (`induction.<run>`).
#
# **Your own runs:** `make lab RUNS=runs/mine`, or set `runs` in the next cell (or run it headless
# with `LABKIT_RUNS=runs/mine jupyter nbconvert --execute`); their figures then go to
# `runs/mine/figures`, never into the committed `figures/`, which only the study's own runs
# (`runs/paper-mini`) rewrite.

# %% tags=["parameters"]
# Other runs: set `runs` here, or start the lab with `make lab RUNS=runs/mine`. Their figures
# then go to <first run>/figures, never into the committed figures/.
runs = None  # run directories, or directories of runs (None: $LABKIT_RUNS, else the study)
smoke = False  # few milestones and documents (CI)
figures_dir = None  # None: ../figures for the committed study, else <first run>/figures

# %%
import matplotlib.pyplot as plt
import numpy as np

from labkit.figures import notebook_inputs, run_style, save_figure, save_results
from labkit.run import find_runs, main_runs, pick_milestones
from labkit.study import (
    attention_on_repeat,
    icl_over_milestones,
    induction_over_milestones,
    induction_summary,
)

runs, figures_dir = notebook_inputs(runs, figures_dir)
study = main_runs(find_runs(runs))
threshold = 0.3
seq_len, batch = (16, 4) if smoke else (64, 16)
early, late = (8, 60) if smoke else (16, 200)  # token positions of the ICL score
# every milestone of the dense runs (a transition lies between two of them), 8 of the control
# runs; a few in smoke mode
chosen = {
    r.name: pick_milestones(r.milestones, 3 if smoke else None if r.mix == "dense" else 8)
    for r in study
}
induction = {
    r.name: induction_over_milestones(chosen[r.name], seq_len, batch, threshold, progress=True)
    for r in study
}
# in-context learning on held-out text of the corpus each run trained on
icl_split = {r.name: "control" if r.mix == "control" else "general" for r in study}
icl = {
    r.name: icl_over_milestones(
        chosen[r.name], icl_split[r.name], 8 if smoke else 32, early, late, True
    )
    for r in study
}
summary = {r.name: induction_summary(induction[r.name], icl[r.name]) for r in study}
sources = [m for ms in chosen.values() for m in ms]


def picked_rows(rows, n):
    """At most n rows for the per-head grids: evenly spaced, with the first and the last."""
    keep = sorted({int(round(i)) for i in np.linspace(0, len(rows) - 1, min(n, len(rows)))})
    return [rows[i] for i in keep]


# %% [markdown]
# ## Scores per head across training

# %%
for kind, title in [("induction", "induction score"), ("previous_token", "previous-token score")]:
    grids = {r.name: picked_rows(induction[r.name]["milestones"], 3 if smoke else 6) for r in study}
    cols = max(len(rows) for rows in grids.values())
    fig, axes = plt.subplots(
        len(study),
        cols,
        figsize=(1.9 * cols + 1, 1.7 * len(study) + 0.8),
        squeeze=False,
        layout="constrained",
    )
    for i, r in enumerate(study):
        rows = grids[r.name]
        for j, ax in enumerate(axes[i]):
            if j >= len(rows):
                ax.axis("off")
                continue
            img = ax.imshow(np.array(rows[j][kind]), vmin=0, vmax=1, aspect="auto", cmap="magma")
            ax.set_title(f"{rows[j]['tokens'] / 1e6:.3g}M tokens", fontsize=7)
            ax.set_xticks(range(r.model.n_heads))
            ax.set_yticks(range(r.model.n_layers))
            ax.tick_params(labelsize=6)
            ax.grid(False)
        axes[i, 0].set_ylabel(f"{r.label}\nlayer", fontsize=7)
    fig.colorbar(img, ax=axes, shrink=0.6, label=title)
    fig.suptitle(f"{title.capitalize()} per head (heads across, layers down; scale 0 to 1)")
    save_figure(fig, f"02_{kind}_heads", figures_dir, sources=sources)

# %% [markdown]
# ## The phase change against in-context learning
#
# Left: the best head's induction score at every milestone, with the threshold (dashed) and the
# uniform-attention level (dotted); the band marks the interval in which the threshold was
# crossed. Middle: the in-context-learning score on held-out text of the run's own corpus (more
# negative = later tokens predicted better than early ones). Right: loss on the two copies of the
# repeated random sequence.

# %%
fig, (ax_ind, ax_icl, ax_copy) = plt.subplots(1, 3, figsize=(12, 3.4))
for r in study:
    rows = induction[r.name]["milestones"]
    style = run_style(r.attention, r.mix)
    tokens = np.array([row["tokens"] for row in rows]) / 1e6
    ax_ind.plot(tokens, [row["max_induction"] for row in rows], marker=".", label=r.label, **style)
    crossed = summary[r.name]["crossed_in"]
    if crossed:
        ax_ind.axvspan(crossed[0] / 1e6, crossed[1] / 1e6, color=style["color"], alpha=0.12)
        ax_icl.axvspan(crossed[0] / 1e6, crossed[1] / 1e6, color=style["color"], alpha=0.12)
    ax_icl.plot(
        [x["tokens"] / 1e6 for x in icl[r.name]],
        [x["icl_score"] for x in icl[r.name]],
        marker=".",
        **style,
    )
    ax_copy.plot(tokens, [row["loss_first_copy"] for row in rows], marker=".", alpha=0.35, **style)
    ax_copy.plot(tokens, [row["loss_second_copy"] for row in rows], marker="o", ms=3, **style)
uniform = next(iter(induction.values()))["uniform_score"] if study else 0.0
ax_ind.axhline(threshold, color="black", ls="--", lw=0.8, label=f"threshold {threshold}")
ax_ind.axhline(uniform, color="grey", ls=":", lw=1, label=f"uniform attention ({uniform:.3f})")
ax_ind.set_ylim(0, 1)
ax_ind.set_title("best head's induction score\n(band: threshold crossed)")
if study:
    ax_icl.set_title(f"in-context-learning score\n(loss at token {late} minus token {early})")
ax_copy.set_title("loss on repeated random tokens\n(faint: first copy, bold: second copy)")
for ax in (ax_ind, ax_icl, ax_copy):
    ax.set_xlabel("tokens (millions)")
ax_ind.legend(fontsize=7)
fig.tight_layout()
save_figure(fig, "02_phase_change", figures_dir, sources=sources)

# %%
save_results(figures_dir, "induction", summary)
print(f"{'run':<16}{'max score':>10}{'crossed at (tokens)':>22}{'inside':>8}{'copy drop':>11}")
for name, s in summary.items():
    print(
        f"{name:<16}{s['max_score']:>10.3f}{s['crossing_tokens'] or '-':>22}"
        f"{s['crossed_inside_training']!s:>8}{s['copy_loss_drop']:>11.2f}"
    )

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
