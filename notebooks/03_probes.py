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
# # 03 — Probes
#
# Linear probes on the residual stream (`resid_post`) for the shipped probe targets (`probes/`):
# accuracy (R² for regression targets) on held-out documents, the accuracy of the same probe on the
# Hewitt & Liang control task, and selectivity = accuracy − control accuracy. A probe that is
# accurate but not selective reads something the control can also fit (token identity, document
# identity), not the property. Layer × milestone for a few targets, then every target at the final
# milestone: dense against control corpus, MLA against GQA.

# %% tags=["parameters"]
runs = ["../runs/paper-mini"]  # run directories, or directories of runs
smoke = False  # few milestones and documents (CI)
figures_dir = "../figures"

# %%
import matplotlib.pyplot as plt
import numpy as np

from labkit.figures import save_figure, use_style
from labkit.study import (
    find_runs,
    load_probe_spec,
    pick_milestones,
    probe_over_milestones,
    probe_targets,
)

use_style()
study = find_runs(runs)
documents = 24 if smoke else 150  # per probe target
over_training = (
    ["domain", "digit"]
    if smoke
    else ["domain", "factual_density", "person_occupation", "number_value"]
)
targets = ["domain", "digit", "answerable"] if smoke else probe_targets()
chosen = {r.name: pick_milestones(r.milestones, 2 if smoke else 5) for r in study}


def score(value):
    return np.nan if value is None else value


# %% [markdown]
# ## Layer × milestone

# %%
for target in over_training:
    spec = load_probe_spec(target, max_documents=documents)
    rows = {r.name: probe_over_milestones(chosen[r.name], spec, progress=True) for r in study}
    metric = "R²" if rows[study[0].name][0]["task"] == "regression" else "accuracy"
    fig, axes = plt.subplots(2, len(study), figsize=(2.9 * len(study), 5.2), squeeze=False)
    for j, r in enumerate(study):
        names = [m.name for m in chosen[r.name]]
        layers = sorted({x["layer"] for x in rows[r.name]})
        for i, (key, label) in enumerate([("accuracy", metric), ("selectivity", "selectivity")]):
            grid = np.array(
                [
                    [
                        score(
                            next(
                                x[key]
                                for x in rows[r.name]
                                if x["layer"] == layer and x["milestone"] == name
                            )
                        )
                        for name in names
                    ]
                    for layer in layers
                ]
            )
            ax = axes[i, j]
            img = ax.imshow(
                grid,
                vmin=-0.2 if key == "selectivity" else 0,
                vmax=1,
                aspect="auto",
                origin="lower",
                cmap="magma",
            )
            for (y, x), v in np.ndenumerate(grid):
                ax.text(
                    x,
                    y,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if v < 0.5 else "black",
                )
            tokens = [f"{x['tokens'] / 1e6:.2g}M" for x in rows[r.name] if x["layer"] == layers[0]]
            ax.set_xticks(range(len(names)), tokens, fontsize=6)
            ax.set_yticks(range(len(layers)))
            ax.grid(False)
            ax.set_title(f"{r.label}: {label}", fontsize=8)
            if j == 0:
                ax.set_ylabel("layer")
        axes[1, j].set_xlabel("tokens")
    fig.suptitle(f"Probe '{target}' ({spec['description']})", fontsize=8)
    fig.tight_layout()
    save_figure(
        fig, f"03_probe_{target}", figures_dir, sources=[m for ms in chosen.values() for m in ms]
    )

# %% [markdown]
# ## Every target at the final milestone
#
# For each target and run, the best layer's score and that layer's control score and selectivity;
# the grey tick is the majority-class (or mean-predictor) baseline.

# %%
final = {}
for target in targets:
    spec = load_probe_spec(target, max_documents=documents)
    for r in study:
        rows = probe_over_milestones(r.milestones[-1:], spec)
        final[target, r.name] = max(rows, key=lambda x: x["accuracy"])

fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.9 * len(targets) + 2), 6), sharex=True)
width = 0.8 / len(study)
x = np.arange(len(targets))
for k, r in enumerate(study):
    color = {"mla": "#1f77b4", "gqa": "#d62728"}[r.attention]
    hatch = None if r.mix == "dense" else "//"
    acc = [final[t, r.name]["accuracy"] for t in targets]
    ctl = [score(final[t, r.name]["control_accuracy"]) for t in targets]
    sel = [score(final[t, r.name]["selectivity"]) for t in targets]
    pos = x - 0.4 + width * (k + 0.5)
    axes[0].bar(
        pos, acc, width, color=color, hatch=hatch, alpha=0.85, label=r.label, edgecolor="white"
    )
    axes[0].scatter(
        pos, ctl, marker="_", color="black", s=60, zorder=3, label="control" if k == 0 else None
    )
    axes[0].scatter(
        pos,
        [final[t, r.name]["baseline"] for t in targets],
        marker="_",
        color="#999999",
        s=60,
        zorder=3,
        label="baseline" if k == 0 else None,
    )
    axes[1].bar(pos, sel, width, color=color, hatch=hatch, alpha=0.85, edgecolor="white")
axes[0].set_ylabel("best layer: accuracy / R²")
axes[1].set_ylabel("selectivity")
axes[1].axhline(0, color="black", lw=0.8)
axes[1].set_xticks(x, targets, rotation=30, ha="right")
axes[0].legend(ncol=3, fontsize=7)
fig.suptitle("Probes at the final milestone (solid: dense corpus, hatched: control corpus)")
fig.tight_layout()
save_figure(fig, "03_probe_targets", figures_dir, sources=[r.milestones[-1] for r in study])

# %%
print(f"{'target':<24}" + "".join(f"{r.name:>16}" for r in study) + "   (accuracy / selectivity)")
for t in targets:
    cells = [
        f"{final[t, r.name]['accuracy']:.2f} / {score(final[t, r.name]['selectivity']):+.2f}"
        for r in study
    ]
    print(f"{t:<24}" + "".join(f"{c:>16}" for c in cells))
