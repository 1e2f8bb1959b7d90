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
# The positive control of Olsson et al. (2022): on a random token sequence followed by itself, an
# induction head at a token of the second copy attends to the token right after that token's
# first occurrence, and a model with induction heads predicts the second copy far better than the
# first. Two scores of that attention are reported for every head, each with the level a head
# attending uniformly over its causal window gets:
#
# - the **second-copy score** (Olsson et al., ARENA): the mean attention from each second-copy
#   query to that stripe -- at most 1; a head counts as an induction head above 0.3;
# - TransformerLens's `detect_head("induction_head")`: the same attention mass divided by every
#   query's row, first copy included -- at most about 0.5 on [r, r].
#
# A phase change is marked only where the best head's second-copy score crosses 0.3 between two
# milestones strictly inside training. A score is not a mechanism: for the final milestone of
# every run the notebook names the best head of a layer >= 1, the previous-token head of an
# earlier layer that would feed it, and the share of the copy-loss drop that mean-ablating the
# head's `hook_z` removes, with a bootstrap interval over held-out sequences. The in-context-
# learning score (Olsson et al.: the loss at a late token minus the loss at an early one) is
# measured on >= 300 held-out documents at several positions, with bootstrap intervals. The
# numbers go to `results.json` (`induction.<run>`, `icl.<run>`).
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
    induction_mechanism_at,
    induction_over_milestones,
    induction_summary,
)

runs, figures_dir = notebook_inputs(runs, figures_dir)
study = main_runs(find_runs(runs))
threshold = 0.3
seq_len, batch = (16, 4) if smoke else (31, 16)  # 1 + 2 x 31 tokens fit the shortest context
documents = 8 if smoke else 300  # ICL documents per milestone
early, late = 8, (16, 32, 48, 63)  # ICL token positions (capped at each model's context)
chosen = {r.name: pick_milestones(r.milestones, 3 if smoke else 12) for r in study}
induction = {
    r.name: induction_over_milestones(chosen[r.name], seq_len, batch, threshold, progress=True)
    for r in study
}
summary = {r.name: induction_summary(induction[r.name]) for r in study}
for r in study:  # the mechanism at the final milestone, on sequences the scores did not use
    summary[r.name]["mechanism"] = induction_mechanism_at(
        r.milestones[-1], seq_len, batch=16 if smoke else 64
    )
# in-context learning on held-out text of the corpus each run trained on
icl_split = {r.name: "control" if r.mix == "control" else "general" for r in study}
icl = {
    r.name: icl_over_milestones(chosen[r.name], icl_split[r.name], documents, early, late, True)
    for r in study
}
sources = [m for ms in chosen.values() for m in ms]


def picked_rows(rows, n):
    """At most n rows for the per-head grids: evenly spaced, with the first and the last."""
    keep = sorted({int(round(i)) for i in np.linspace(0, len(rows) - 1, min(n, len(rows)))})
    return [rows[i] for i in keep]


# %% [markdown]
# ## Scores per head across training
#
# Each grid's colour scale runs from 0 to the larger of the threshold and the highest score any
# head reached, so that scores at the uniform level are visible rather than black; the colour bar
# marks the uniform level and the threshold.

# %%
uniform = {
    "second_copy": next(iter(induction.values()))["uniform_score"] if study else 0.0,
    "previous_token": None,
}
for kind, title in [("second_copy", "second-copy score"),
                    ("previous_token", "previous-token score")]:  # fmt: skip
    grids = {r.name: picked_rows(induction[r.name]["milestones"], 3 if smoke else 6) for r in study}
    cols = max([len(rows) for rows in grids.values()], default=1)
    top = max([np.max(row[kind]) for rows in grids.values() for row in rows], default=1.0)
    vmax = float(max(threshold, top))
    fig, axes = plt.subplots(
        max(1, len(study)),
        cols,
        figsize=(1.9 * cols + 1.4, 1.7 * len(study) + 0.9),
        squeeze=False,
        layout="constrained",
    )
    img = None
    for i, r in enumerate(study):
        rows = grids[r.name]
        for j, ax in enumerate(axes[i]):
            if j >= len(rows):
                ax.axis("off")
                continue
            img = ax.imshow(np.array(rows[j][kind]), vmin=0, vmax=vmax, aspect="auto", cmap="magma")
            ax.set_title(f"{rows[j]['tokens'] / 1e6:.3g}M tokens", fontsize=7)
            ax.set_xticks(range(r.model.n_heads))
            ax.set_yticks(range(r.model.n_layers))
            ax.tick_params(labelsize=6)
            ax.grid(False)
        axes[i, 0].set_ylabel(f"{r.label}\nlayer", fontsize=7)
    if img is not None:
        bar = fig.colorbar(img, ax=axes, shrink=0.7, label=title)
        if kind == "second_copy":
            bar.ax.axhline(uniform[kind], color="white", lw=1.2, ls=":")
            bar.ax.axhline(threshold, color="white", lw=1.2, ls="--")
    note = " (dotted: uniform attention, dashed: threshold)" if kind == "second_copy" else ""
    fig.suptitle(f"{title.capitalize()} per head (heads across, layers down; 0 to "
                 f"{vmax:.2f}){note}", fontsize=9)  # fmt: skip
    name = "induction" if kind == "second_copy" else kind
    save_figure(fig, f"02_{name}_heads", figures_dir, sources=sources)

# %% [markdown]
# ## The phase change against in-context learning
#
# Top left: the best head's second-copy score at every milestone, with the threshold (dashed) and
# the uniform-attention level (dotted); a band marks the interval in which the threshold was
# crossed. Top right: the same for TransformerLens's detect_head score, with its own uniform
# level. Bottom left: the loss on the two copies of the repeated random sequence, against ln V (the
# loss of a uniform guess over the vocabulary, which is what the first copy's tokens deserve).
# Bottom right: the in-context-learning score at the latest position, with its 95 % bootstrap
# interval over held-out documents (more negative = late tokens predicted better than early ones).

# %%
fig, axes = plt.subplots(2, 2, figsize=(10.5, 6.8), layout="constrained")
(ax_sc, ax_tl), (ax_copy, ax_icl) = axes
for r in study:
    rows = induction[r.name]["milestones"]
    style = run_style(r.attention, r.mix)
    tokens = np.array([row["tokens"] for row in rows]) / 1e6
    ax_sc.plot(tokens, [row["max_second_copy"] for row in rows], marker=".", label=r.label, **style)
    ax_tl.plot(tokens, [row["max_tl"] for row in rows], marker=".", **style)
    crossed = summary[r.name]["crossed_in"]
    if crossed:
        for ax in (ax_sc, ax_icl):
            ax.axvspan(crossed[0] / 1e6, crossed[1] / 1e6, color=style["color"], alpha=0.12)
    ax_copy.plot(tokens, [row["loss_first_copy"] for row in rows], marker=".", alpha=0.35, **style)
    ax_copy.plot(tokens, [row["loss_second_copy"] for row in rows], marker="o", ms=3, **style)
    at = np.array([x["tokens"] for x in icl[r.name]]) / 1e6
    last = [x["scores"][-1] for x in icl[r.name]]
    ci = np.array([x["ci"][-1] for x in icl[r.name]])
    ax_icl.plot(at, last, marker=".", **style)
    ax_icl.fill_between(at, ci[:, 0], ci[:, 1], color=style["color"], alpha=0.15, lw=0)
if study:
    first = next(iter(induction.values()))
    ax_sc.axhline(threshold, color="black", ls="--", lw=0.8, label=f"threshold {threshold}")
    ax_sc.axhline(first["uniform_score"], color="grey", ls=":", lw=1,
                  label=f"uniform attention ({first['uniform_score']:.3f})")  # fmt: skip
    ax_tl.axhline(first["uniform_tl_score"], color="grey", ls=":", lw=1,
                  label=f"uniform attention ({first['uniform_tl_score']:.3f})")  # fmt: skip
    ln_v = float(np.log(study[0].model.vocab_size))
    ax_copy.axhline(ln_v, color="grey", ls=":", lw=1, label=f"ln V = {ln_v:.2f}")
    position = icl[study[0].name][0]["positions"][-1]
    ax_icl.set_title(f"in-context-learning score (loss at token {position} minus token {early};\n"
                     f"{icl[study[0].name][0]['documents']} documents, 95 % interval)")  # fmt: skip
    ax_icl.axhline(0, color="grey", lw=0.6)
ax_sc.set_ylim(0, 1)
ax_tl.set_ylim(0, 0.55)
ax_sc.set_title("best head's second-copy score (band: threshold crossed)")
ax_tl.set_title("best head's TransformerLens detect_head score")
ax_copy.set_title("loss on repeated random tokens (faint: first copy, bold: second)")
for ax in axes.flat:
    ax.set_xlabel("tokens (millions)")
ax_sc.legend(fontsize=7)
ax_tl.legend(fontsize=7)
ax_copy.legend(fontsize=7)
save_figure(fig, "02_phase_change", figures_dir, sources=sources)

# %%
save_results(figures_dir, "induction", summary)
save_results(figures_dir, "icl", {
    name: {"tokens": [x["tokens"] for x in rows], "positions": rows[0]["positions"],
           "early": early, "documents": rows[0]["documents"],
           "scores": [x["scores"] for x in rows], "ci": [x["ci"] for x in rows]}
    for name, rows in icl.items()
})  # fmt: skip
print(f"{'run':<16}{'2nd-copy':>9}{'TL':>7}{'crossed at':>12}{'copy drop':>10}"
      f"{'head':>8}{'prev':>8}{'ablation (95 % CI)':>22}")  # fmt: skip
for name, s in summary.items():
    m = s["mechanism"]
    print(
        f"{name:<16}{s['max_score']:>9.3f}{s['tl_max_score']:>7.3f}"
        f"{s['crossing_tokens'] or '-':>12}{s['copy_loss_drop']:>10.2f}"
        f"{'L{}H{}'.format(*m['head']):>8}{'L{}H{}'.format(*m['prev_token_head']):>8}"
        f"{m['ablation_fraction']:>9.2f} [{m['ablation_ci'][0]:.2f}, {m['ablation_ci'][1]:.2f}]"
    )

# %% [markdown]
# ## Attention of the heads with the highest second-copy scores
#
# The sequence is a random token string followed by itself. An induction head, at a token of the
# second copy, attends to the token right after that token's first occurrence: the off-diagonal
# stripe one position right of the copy offset. Each title gives the head's second-copy score
# beside the uniform level; a score near that level is not an induction head, whatever its rank.

# %%
top_k = 3
fig, axes = plt.subplots(
    max(1, len(study)), top_k, figsize=(2.7 * top_k, 2.6 * len(study) + 0.4), squeeze=False,
    layout="constrained",
)  # fmt: skip
for i, r in enumerate(study):
    rep = attention_on_repeat(r.milestones[-1], seq_len=16)
    order = np.argsort(rep["second_copy"].ravel())[::-1][:top_k]
    for ax, flat in zip(axes[i], order, strict=True):
        layer, head = divmod(int(flat), rep["second_copy"].shape[1])
        ax.imshow(rep["patterns"][layer, head], vmin=0, vmax=1, cmap="Blues")
        ax.set_title(f"{r.label}: L{layer}H{head} ({rep['second_copy'][layer, head]:.2f}; "
                     f"uniform {rep['uniform_score']:.2f})", fontsize=7)  # fmt: skip
        ax.set_xlabel("key position", fontsize=7)
        ax.set_ylabel("query position", fontsize=7)
        ax.grid(False)
fig.suptitle("Heads with the highest second-copy score at the final milestone (threshold 0.3)")
save_figure(fig, "02_top_heads", figures_dir, sources=[r.milestones[-1] for r in study])
