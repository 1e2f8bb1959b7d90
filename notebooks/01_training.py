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
from labkit.run import find_runs, main_runs

runs, figures_dir = notebook_inputs(runs, figures_dir)
every_run = find_runs(runs)
study = main_runs(every_run)  # one run per attention kind and corpus for the curves
every_logs = {r.name: r.metrics() for r in every_run}
logs = {r.name: every_logs[r.name] for r in study}
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
        if split in r.trained_splits():  # in-distribution only: no loss on a corpus never seen
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
# ## In-distribution loss against KV-cache bytes per token
#
# MLA caches the latent `c_kv` plus one RoPE key per layer; GQA caches K and V of its KV heads.
# The x axis is the cache a token costs at inference over all layers in bf16; the y axis the
# final validation loss on each held-out split the run trained on (a dense run never saw the
# control corpus, so it is not scored on it). Every run of the study on the dense corpus is a
# point: MLA at several `kv_lora_rank`, GQA at several `n_kv_heads`, all at the same token budget,
# second seeds included (their spread is the noise a difference must beat).

# %%
dense_runs = [r for r in every_run if r.mix == "dense"]
trained_on = {r.name: r.trained_splits() for r in every_run}


def final_val(r, split):
    evals = [row for row in every_logs[r.name][1] if f"val/{split}" in row]
    return evals[-1][f"val/{split}"] if evals else np.nan


frontier_splits = sorted(set.intersection(*(set(trained_on[r.name]) for r in dense_runs)))
frontier = {}
fig, axes = plt.subplots(1, len(frontier_splits), figsize=(3.2 * len(frontier_splits), 3.5),
                         squeeze=False, layout="constrained")  # fmt: skip
for ax, split in zip(axes[0], frontier_splits, strict=True):
    ticks = set()
    for attention, marker in (("mla", "o"), ("gqa", "s")):
        cells = {}  # one point per configuration: the mean over its seeds, bars = min to max
        for r in dense_runs:
            if r.attention == attention:
                cells.setdefault(r.model.kv_cache_bytes_per_token(), []).append(r)
        x = sorted(cells)
        ys = [[final_val(r, split) for r in cells[b]] for b in x]
        mean = np.array([np.mean(y) for y in ys])
        lo, hi = mean - [min(y) for y in ys], [max(y) for y in ys] - mean
        color = run_style(attention, "dense")["color"]
        ax.errorbar(x, mean, yerr=[lo, hi], marker=marker, color=color, ms=5, capsize=3, lw=1,
                    label=attention.upper())  # fmt: skip
        for b, y in zip(x, ys, strict=True):
            r = cells[b][0]
            knob = f"r={r.model.kv_lora_rank}" if attention == "mla" else f"kv={r.model.n_kv_heads}"
            seeds = f", {len(y)} seeds" if len(y) > 1 else ""
            ax.annotate(f"{knob}{seeds}", (b, np.mean(y)), fontsize=5, xytext=(4, -8),
                        textcoords="offset points")  # fmt: skip
            frontier.setdefault(split, {}).setdefault(attention, []).append(
                {
                    "kv_bytes_per_token": b,
                    knob.split("=")[0]: int(knob.split("=")[1]),
                    "losses": y,
                    "runs": [c.name for c in cells[b]],
                }  # fmt: skip
            )
        ticks |= set(x)
    ax.set_xscale("log")
    ax.set_xticks(sorted(ticks), [f"{t / 1024:.2g}k" for t in sorted(ticks)], rotation=45,
                  fontsize=6)  # fmt: skip
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("KV-cache bytes / token")
    ax.set_title(f"{split}", fontsize=8)
axes[0, 0].set_ylabel("final validation loss (nats)")
axes[0, 0].legend(fontsize=7)
fig.suptitle("Dense corpus: in-distribution loss against the KV cache (equal tokens; bars: the "
             "spread over seeds)", fontsize=9)  # fmt: skip
save_figure(fig, "01_loss_vs_kv_cache", figures_dir, sources=[r.path for r in dense_runs])
save_results(figures_dir, "kv_frontier", frontier)

# %%
summary = {}
for r in every_run:
    train, evals = every_logs[r.name]
    summary[r.name] = {
        "attention": r.attention,
        "mix": r.mix,
        "seed": r.seed,
        "variant": r.variant,
        "params": r.model.num_params(),
        "kv_cache_bytes_per_token": r.model.kv_cache_bytes_per_token(),
        "tokens": train[-1]["tokens"] if train else 0,
        "steps": train[-1]["step"] if train else 0,
        "trained_splits": trained_on[r.name],
        "final_val": {s: final_val(r, s) for s in trained_on[r.name]},
        "final_train_loss": train[-1]["loss"] if train else None,
    }
save_results(figures_dir, "training", summary)
print(f"{'run':<22}{'KV B/tok':>10}  final loss per trained split")
for name, row in summary.items():
    losses = " ".join(f"{k} {v:.3f}" for k, v in row["final_val"].items())
    print(f"{name:<22}{row['kv_cache_bytes_per_token']:>10,}  {losses}")
