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
# # 00 — The data set
#
# The corpus the study's runs trained on: seed 000's nine dataset dimensions (target share of
# each category against the share realized in the synthetic documents), the source mix of each
# training mix (the high-density `dense` mix and the low-density `control` mix), and token counts
# and document lengths per source. Everything is read from the data set's `manifest.json` and its
# shard indexes; `labkit data card DIR` prints the same numbers as text.
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

from labkit.data.build import document_lengths, load_manifest
from labkit.figures import notebook_inputs, save_figure
from labkit.run import find_runs

runs, figures_dir = notebook_inputs(runs, figures_dir)
study = find_runs(runs)
data_dirs = sorted({r.data_path for r in study})
data_dir = data_dirs[0]
manifest = load_manifest(data_dir)
print(f"{len(study)} runs on {len(data_dirs)} data set(s); this notebook describes {data_dir}")

# %% [markdown]
# ## The nine dimensions: target against realized

# %%
dims = manifest["dimension_targets"]  # empty for a data set without the synthetic source
if not dims:
    print(f"{data_dir} has no synthetic source: no dataset dimensions to draw")
else:
    fig, axes = plt.subplots(3, 3, figsize=(11, 8.5))
    for ax, (dim, targets) in zip(axes.flat, sorted(dims.items()), strict=True):
        cats = sorted(targets)
        realized = manifest["dimensions"][dim]
        x = np.arange(len(cats))
        ax.bar(x - 0.2, [targets[c] for c in cats], 0.4, label="target", color="#999999")
        ax.bar(
            x + 0.2, [realized.get(c, 0.0) for c in cats], 0.4, label="realized", color="#1f77b4"
        )
        ax.set_xticks(x, [c.replace("_", " ") for c in cats], rotation=35, ha="right", fontsize=7)
        ax.set_title(dim.replace("_", " "))
        ax.set_ylabel("share of documents")
    axes.flat[0].legend()
    fig.suptitle(
        f"Dataset dimensions (seed 000): largest |target - realized| = "
        f"{manifest['dimension_max_abs_error_pp']:.2f} points"
    )
    fig.tight_layout()
    save_figure(fig, "00_dimensions", figures_dir, sources=[data_dir / "manifest.json"])

# %% [markdown]
# ## Source mix of each training mix

# %%
mixes = manifest["mixes"]
sources = sorted({s for stages in mixes.values() for st in stages for s in st["tokens"]})
colors = dict(zip(sources, plt.cm.tab10(np.arange(len(sources))), strict=True))
fig, (ax_mix, ax_tok) = plt.subplots(1, 2, figsize=(11, 3.8))
labels, left = [], 0
for mix, stages in mixes.items():
    for st in stages:
        total = sum(st["tokens"].values())
        bottom = 0.0
        for s in sources:
            share = st["tokens"].get(s, 0) / total
            ax_mix.bar(left, share, bottom=bottom, color=colors[s], label=s if left == 0 else None)
            bottom += share
        labels.append(f"{mix}\n{st['name']}\n{total / 1e6:.1f}M")
        left += 1
ax_mix.set_xticks(range(left), labels, fontsize=7)
ax_mix.set_ylabel("share of the stage's tokens")
ax_mix.set_title("Training mixes by stage")
ax_mix.legend(loc="upper left", bbox_to_anchor=(1, 1))
train_tokens = {s: v["tokens"] for s, v in manifest["sources"].items()}
eval_tokens = {s: v["tokens"] for s, v in manifest["eval_splits"].items()}
names = sorted(set(train_tokens) | set(eval_tokens))
x = np.arange(len(names))
ax_tok.bar(x - 0.2, [train_tokens.get(n, 0) / 1e6 for n in names], 0.4, label="train")
ax_tok.bar(x + 0.2, [eval_tokens.get(n, 0) / 1e6 for n in names], 0.4, label="held out")
ax_tok.set_xticks(x, names, rotation=20)
ax_tok.set_ylabel("million tokens")
ax_tok.set_title("Tokens per source (train) and per held-out split")
ax_tok.legend()
fig.tight_layout()
save_figure(fig, "00_sources", figures_dir, sources=[data_dir / "manifest.json"])

# %% [markdown]
# ## Document lengths per source

# %%
lengths = document_lengths(data_dir)
fig, ax = plt.subplots(figsize=(6.5, 3.5))
bins = np.logspace(0.5, np.log10(max(int(v.max()) for v in lengths.values()) + 1), 40)
for s, v in sorted(lengths.items()):
    ax.hist(v, bins=bins, histtype="step", label=f"{s} (median {int(np.median(v))})")
ax.set_xscale("log")
ax.set_xlabel("document length (tokens)")
ax.set_ylabel("documents")
ax.legend()
ax.set_title("Training documents by length")
save_figure(fig, "00_lengths", figures_dir, sources=[data_dir / "manifest.json"])

# %%
print(f"{'source':<12}{'documents':>10}{'tokens':>12}")
for s, v in sorted(manifest["sources"].items()):
    print(f"{s:<12}{v['documents']:>10,}{v['tokens']:>12,}")
