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
# # 05 — The MLA latent `c_kv`
#
# MLA caches one `kv_lora_rank`-wide latent per token and layer (`hook_kv_latent`, after its
# norm) and rebuilds every head's keys and values from it. How much of that width does the model
# use? The spectrum and effective rank (participation ratio, entropy rank) of `c_kv` across
# training; the share of k and v variance carried by its top-r principal directions; the loss when
# `c_kv` is projected onto them; and probes reading `c_kv` against probes reading the residual
# stream of the same layer. GQA runs have no latent and are skipped here.
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

from labkit.analysis.probe_tasks import load_probe_spec
from labkit.figures import notebook_inputs, run_style, save_figure, save_results
from labkit.run import find_runs, main_runs, pick_milestones
from labkit.study import (
    kv_patching,
    latent_over_milestones,
    logit_lens_over_milestones,
    probe_over_milestones,
)

runs, figures_dir = notebook_inputs(runs, figures_dir)
every_mla = [r for r in find_runs(runs) if r.attention == "mla"]
if not every_mla:
    raise ValueError(f"no MLA run among {runs}: the latent exists only in MLA models")
mla_runs = [r for r in main_runs(every_mla)]  # one per corpus, at the preset's kv_lora_rank
# texts no longer than the runs trained on (positions past it the models never saw), ~4k tokens
max_len = 32 if smoke else min(128, mla_runs[0].context)
documents = 4 if smoke else 32 * 128 // max_len
chosen = {r.name: pick_milestones(r.trained, 2 if smoke else 6) for r in mla_runs}
latent = {
    r.name: latent_over_milestones(chosen[r.name], "general", documents, max_len, True)
    for r in mla_runs
}
# every MLA run at its final milestone, the kv_lora_rank variants included (the truncation figure)
final_latent = {
    r.name: latent[r.name] if r.name in latent
    else latent_over_milestones(r.milestones[-1:], "general", documents, max_len, True)
    for r in every_mla
}  # fmt: skip
n_layers = mla_runs[0].model.n_layers
rank = mla_runs[0].model.kv_lora_rank
sources = [m for ms in chosen.values() for m in ms]


def final_rows(name):
    last = latent[name][-1]["milestone"]
    return [row for row in latent[name] if row["milestone"] == last]


# %% [markdown]
# ## Spectrum and effective rank

# %%
fig, (ax_sv, ax_pr, ax_er) = plt.subplots(1, 3, figsize=(12, 3.4))
for r in mla_runs:
    style = run_style(r.attention, r.mix)
    for row in final_rows(r.name):
        sv = np.array(row["singular_values"])
        ax_sv.plot(
            np.arange(1, len(sv) + 1),
            sv**2 / (sv**2).sum(),
            linestyle=style["linestyle"],
            color=plt.cm.viridis(row["layer"] / n_layers),
            label=f"{r.mix}, layer {row['layer']}",
        )
    for layer in range(n_layers):
        rows = [row for row in latent[r.name] if row["layer"] == layer]
        color = plt.cm.viridis(layer / n_layers)
        for ax, key in ((ax_pr, "participation_ratio"), (ax_er, "entropy_rank")):
            ax.plot(
                [x["tokens"] for x in rows],
                [x[key] for x in rows],
                marker=".",
                color=color,
                linestyle=style["linestyle"],
                label=f"{r.mix}, layer {layer}",
            )
ax_sv.set_yscale("log")
ax_sv.set_xlabel("principal direction")
ax_sv.set_ylabel("share of c_kv variance")
ax_sv.set_title("c_kv spectrum at the final milestone")
ax_pr.set_title(f"participation ratio (of {rank})")
ax_er.set_title(f"entropy rank (of {rank})")
for ax in (ax_pr, ax_er):
    ax.set_xscale("log")
    ax.set_xlabel("tokens")
ax_sv.legend(fontsize=6, ncol=2)
fig.suptitle("solid: dense corpus, dashed: control corpus", fontsize=8)
fig.tight_layout()
save_figure(fig, "05_latent_spectrum", figures_dir, sources=sources)

# %% [markdown]
# ## How many latent directions do k, v and the loss need?

# %%
fig, (ax_k, ax_v, ax_loss, ax_all) = plt.subplots(1, 4, figsize=(15, 3.4))
for r in mla_runs:
    style = run_style(r.attention, r.mix)
    for row in final_rows(r.name):
        color = plt.cm.viridis(row["layer"] / n_layers)
        ranks = row["ranks"]
        label = f"{r.mix}, layer {row['layer']}"
        ax_k.plot(
            ranks,
            row["kv_variance_explained"]["k"],
            marker=".",
            color=color,
            linestyle=style["linestyle"],
            label=label,
        )
        ax_v.plot(
            ranks,
            row["kv_variance_explained"]["v"],
            marker=".",
            color=color,
            linestyle=style["linestyle"],
        )
        ax_loss.plot(
            ranks,
            [row["truncated_loss"][k] for k in ranks],
            marker=".",
            color=color,
            linestyle=style["linestyle"],
        )
truncation = {}
for r in every_mla:
    last = final_latent[r.name][-1]["milestone"]
    row = next(x for x in final_latent[r.name] if x["milestone"] == last)
    ranks = row["ranks"]
    all_layers = [row["truncated_all_layers_loss"][k] for k in ranks]
    style = run_style(r.attention, r.mix)
    if r.variant:  # the kv_lora_rank variants: one colour each, by rank
        style["color"] = plt.cm.plasma(np.log2(r.model.kv_lora_rank) / np.log2(4 * rank))
    ax_all.plot(ranks, all_layers, marker=".", label=f"{r.name} (r={ranks[-1]})", **style)
    truncation[r.name] = {"kv_lora_rank": r.model.kv_lora_rank, "ranks": ranks,
                          "all_layers_loss": all_layers}  # fmt: skip
ax_k.set_title("k (no-RoPE part) variance kept")
ax_v.set_title("v variance kept")
ax_loss.set_title("loss with c_kv truncated to rank r\n(one layer at a time)")
ax_all.set_title("loss with every layer's c_kv truncated\nto rank r at once (all MLA runs)")
for ax in (ax_k, ax_v, ax_loss, ax_all):
    ax.set_xscale("symlog", base=2, linthresh=1)  # rank 0 (the mean latent only) included
    ax.set_xlabel("rank r of the projected c_kv")
ax_k.legend(fontsize=6)
ax_all.legend(fontsize=6)
fig.tight_layout()
save_figure(fig, "05_latent_truncation", figures_dir, sources=[r.milestones[-1] for r in every_mla])
save_results(figures_dir, "latent_truncation", truncation)

# %% [markdown]
# ## Single latent directions
#
# The loss increase when one principal direction of a layer's `c_kv` is mean-ablated (its
# component replaced by the mean's), for the top three directions at the final milestone, against
# the control: the same ablation of a random unit direction of the latent space (grey: the mean
# over 8 random directions, with their range). A direction that carries a large share of the
# variance need not carry loss; one that costs no more than a random one carries nothing special.

# %%
fig, axes = plt.subplots(1, len(mla_runs), figsize=(4 * len(mla_runs), 3.0), squeeze=False,
                         layout="constrained")  # fmt: skip
direction_results = {}
for ax, r in zip(axes[0], mla_runs, strict=True):
    rows = final_rows(r.name)
    width = 0.8 / 4
    clean = [row["truncated_loss"][row["ranks"][-1]] for row in rows]
    for j in range(3):
        delta = [
            row["direction_ablation_loss"].get(j, np.nan) - c
            for row, c in zip(rows, clean, strict=True)
        ]
        ax.bar(
            np.arange(len(rows)) - 0.4 + width * (j + 0.5), delta, width, label=f"direction {j + 1}"
        )
    random_delta = np.array([np.array(row["random_direction_ablation_loss"]) - c
                             for row, c in zip(rows, clean, strict=True)])  # fmt: skip
    mean = random_delta.mean(1)
    ax.bar(np.arange(len(rows)) - 0.4 + width * 3.5, mean, width, color="#999999",
           yerr=[mean - random_delta.min(1), random_delta.max(1) - mean], capsize=2,
           label="random direction (mean, range)")  # fmt: skip
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(range(len(rows)))
    ax.set_xlabel("layer")
    ax.set_title(f"{r.label}", fontsize=8)
    direction_results[r.name] = {
        "principal": [[row["direction_ablation_loss"].get(j, None) for j in range(3)]
                      for row in rows],
        "random": random_delta.tolist(), "clean": clean,
    }  # fmt: skip
axes[0, 0].set_ylabel("loss increase (nats)")
axes[0, 0].legend(fontsize=6)
save_figure(
    fig, "05_direction_ablation", figures_dir, sources=[chosen[r.name][-1] for r in mla_runs]
)
save_results(figures_dir, "latent_directions", direction_results)

# %%
for r in mla_runs:
    for row in final_rows(r.name):
        kept = dict(zip(row["ranks"], row["kv_variance_explained"]["v"], strict=True))
        enough = min((k for k, share in kept.items() if share >= 0.9), default=None)
        print(
            f"{r.name} layer {row['layer']}: participation ratio "
            f"{row['participation_ratio']:.1f}, smallest rank keeping 90 % of v variance: "
            f"{enough}"
        )

# %% [markdown]
# ## Probes on `c_kv` against the residual stream
#
# The same linear probe (split by document, 95 % bootstrap interval over test documents) on the
# cached latent `c_kv` and on the residual stream entering the layer, for targets whose label
# depends on context (and one document label), against two references drawn per panel: the
# majority class (dotted) and the Hewitt-Liang control task's accuracy on the same features
# (dashed; R² of the training mean for regression). The axis starts below both, so a panel shows
# how far above its references a probe sits, not a sliver near 1.

# %%
targets = ["seen_before"] if smoke else ["seen_before", "repeat_mention", "number_value", "domain"]
rows = {}
for target in targets:
    spec = load_probe_spec(target, max_documents=24 if smoke else 300)
    for r in mla_runs:
        for site in ("kv_latent", "resid_pre"):
            rows[target, r.name, site] = probe_over_milestones(r.milestones[-1:], spec, site)
fig, axes = plt.subplots(1, len(targets), figsize=(3.2 * len(targets), 3.3), squeeze=False,
                         layout="constrained")  # fmt: skip
for ax, target in zip(axes[0], targets, strict=True):
    lows = []
    for r in mla_runs:
        style = run_style(r.attention, r.mix)
        for site, marker, alpha, shift in (("kv_latent", "o", 1.0, -0.08),
                                           ("resid_pre", "s", 0.45, 0.08)):  # fmt: skip
            got = rows[target, r.name, site]
            x = np.array([g["layer"] for g in got]) + shift
            acc = np.array([g["accuracy"] for g in got])
            err = [acc - [g["ci_low"] for g in got], [g["ci_high"] for g in got] - acc]
            ax.errorbar(x, acc, yerr=err, marker=marker, alpha=alpha, capsize=2, ms=4,
                        label=f"{r.mix}: {site}", **style)  # fmt: skip
            control = [g["control_accuracy"] for g in got]
            if None not in control:
                ax.plot(x, control, ls="--", lw=0.8, alpha=alpha, color=style["color"])
            ax.plot(x, [g["baseline"] for g in got], ls=":", lw=0.8, color="black")
            lows += [*(g["ci_low"] for g in got), *(g["baseline"] for g in got),
                     *(c for c in control if c is not None)]  # fmt: skip
    ax.set_ylim(min(lows) - 0.05, 1.0)
    ax.set_title(target, fontsize=8)
    ax.set_xlabel("layer")
    ax.set_xticks(range(n_layers))
axes[0, 0].set_ylabel("probe accuracy / R² (test documents)")
axes[0, 0].legend(fontsize=6)
fig.suptitle("c_kv (the cached latent, circles) against the residual stream entering the layer "
             "(squares); dashed: control task, dotted: majority", fontsize=8)  # fmt: skip
save_figure(fig, "05_latent_probes", figures_dir, sources=[r.milestones[-1] for r in mla_runs])
latent_probes = {}
for (target, run, site), got in rows.items():
    latent_probes.setdefault(run, {}).setdefault(site, {})[target] = [
        {k: g[k] for k in ("layer", "accuracy", "ci_low", "ci_high", "control_accuracy",
                           "baseline")} for g in got
    ]  # fmt: skip
save_results(figures_dir, "latent_probes", latent_probes)

# %% [markdown]
# ## TransformerLens's toolbox on MLA: the logit lens and patching `c_kv`
#
# `LabModel` speaks TransformerLens's model protocol, so TransformerLens's own `ActivationCache`
# and `patching` run on the MLA checkpoints unchanged. The logit lens reads the residual stream
# entering each layer through the final norm and the unembedding
# (`cache.accumulated_resid(apply_ln=True) @ model.W_U`) and scores it as a next-token
# prediction; its last point is the model's own loss. Patching: held-out windows of 24 tokens
# whose first 12 tokens are swapped for another document's (corrupted); one layer's `c_kv` at one
# position is copied from the clean run into the corrupted one
# (`transformer_lens.patching.generic_activation_patch` on `hook_kv_latent`), and the recovery of
# the log-probability of the last 4 clean tokens is measured: 0 = corrupted, 1 = clean.

# %%
lens = {
    r.name: logit_lens_over_milestones(chosen[r.name], "general", documents, max_len, True)
    for r in mla_runs
}
fig, axes = plt.subplots(1, len(mla_runs), figsize=(4.2 * len(mla_runs), 3.4), squeeze=False)
for ax, r in zip(axes[0], mla_runs, strict=True):
    rows = lens[r.name]
    for i, row in enumerate(rows):
        ax.plot(
            range(len(row["loss"])),
            row["loss"],
            marker=".",
            color=plt.cm.viridis(i / max(1, len(rows) - 1)),
            label=f"{row['tokens']:,} tokens",
        )
    labels = [label.replace("_pre", "").replace("final_post", "out") for label in rows[0]["labels"]]
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("residual stream entering layer (out = after the last)")
    ax.set_title(f"{r.mix}: logit lens")
    ax.legend(fontsize=6)
axes[0, 0].set_ylabel("next-token loss (nats)")
fig.tight_layout()
save_figure(fig, "05_logit_lens", figures_dir, sources=sources)

# %%
patched = {r.name: kv_patching(r.milestones[-1], "general", 2 if smoke else 8) for r in mla_runs}
fig, axes = plt.subplots(1, len(mla_runs), figsize=(4.6 * len(mla_runs), 3.0), squeeze=False)
for ax, r in zip(axes[0], mla_runs, strict=True):
    result = patched[r.name]
    image = ax.imshow(np.array(result["recovery"]), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.axvline(result["corrupted_positions"] - 0.5, color="black", linewidth=0.8)
    ax.set_xlabel("position of the patched c_kv (left of the line: corrupted)")
    ax.set_ylabel("layer")
    ax.set_yticks(range(n_layers))
    ax.set_title(f"{r.mix}: recovery by patching c_kv", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    print(
        f"{r.name}: log-prob of the last tokens, clean {result['clean']:.3f}, corrupted "
        f"{result['corrupted']:.3f}; best single patch recovers "
        f"{np.max(result['recovery']):.2f} ({result['documents']} windows)"
    )
fig.tight_layout()
save_figure(fig, "05_kv_patching", figures_dir, sources=[r.milestones[-1] for r in mla_runs])
