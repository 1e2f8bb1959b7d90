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
# Linear CKA (Kornblith et al. 2019), all on the same held-out documents of the `general` split,
# each document's first token left out (with a fixed first token -- the attention sink -- its
# activations are alike in every document and every model, and would dominate the index). A CKA
# value means little alone: a trained layer and an untrained one already share token identity,
# and two seeds of one model are not identical. So:
#
# 1. **Positive control** — Kornblith et al.'s test: between two seeds of the same cell, does CKA
#    find the corresponding layer (argmax over the other seed's layers)? For every pair of seeds of
#    the cell with the most seeds, at two sites: the residual stream after each block
#    (`resid_post`, the layer outputs Kornblith et al. compare) and each block's own output
#    (`attn_out + mlp_out`, what the block adds). The residual stream carries every earlier
#    block's output forward, so adjacent layers of one model are alike there by construction;
#    a block's own output is not. Reported as `cka_layer_identification.<cell>.<site>` with a 95 %
#    bootstrap interval over documents.
# 2. **Within-model** layer × layer matrices: how much each layer changes the stream.
# 3. **MLA against GQA** per layer across training, between two references: the seed-vs-seed CKA
#    of the same layer (how similar two runs of one architecture are) and a random-init floor (CKA
#    of the trained layer with the untrained twin's, from its step-0 milestone).
# 4. CKA of each layer to its own final state, and RSA between MLA and GQA.
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

from labkit.analysis.similarity import cka_matrix
from labkit.figures import notebook_inputs, run_style, save_figure, save_results
from labkit.run import (
    find_runs,
    main_runs,
    pick_milestones,
    pick_run,
    seed_groups,
    shared_milestones,
)
from labkit.study import (
    BLOCK_OUT,
    cka_to_final,
    compare_runs,
    eval_sequences,
    layer_activations,
    seed_layer_identification,
)

runs, figures_dir = notebook_inputs(runs, figures_dir)
every_run = find_runs(runs)
study = main_runs(every_run)
# texts no longer than the runs trained on (positions past it the models never saw), each after
# the runs' first token as in training; >= 30k tokens
max_len = 32 if smoke else min(128, study[0].context)
documents = 8 if smoke else 256 * 128 // max_len
sequences = eval_sequences(study[0].data_path, "general", documents, max_len,
                           study[0].model.bos_token_id)  # fmt: skip
print(f"{len(sequences)} documents, {sum(map(len, sequences)) - len(sequences):,} tokens "
      "(first tokens left out)")  # fmt: skip
SITES = ("resid_post", BLOCK_OUT)
final_acts = {}


def acts_at(milestone):
    """Per-layer residual-stream activations of a milestone on `sequences`, computed once."""
    if milestone not in final_acts:
        final_acts[milestone] = layer_activations(milestone, sequences, drop_first=True)
    return final_acts[milestone]


def cell_name(runs_of_cell):
    r = runs_of_cell[0]
    extra = "".join(f"-{k}{v}" for k, v in r.variant.items())
    return f"{r.attention}-{r.mix}{extra}"


# %% [markdown]
# ## The positive control: seeds of one cell, corresponding layers
#
# One panel per site and pair of seeds. Rows: the first seed's layers; columns: the second's; a
# ring marks each row's most similar layer. The control passes where every ring sits on the
# diagonal; each title gives the pair's share of identified layers and its 95 % interval.

# %%
seeds = seed_groups(every_run)
identification = {
    cell_name(group): {site: seed_layer_identification(group, sequences, site) for site in SITES}
    for group in seeds.values()
}
panels = [(cell, site, pair) for cell, by_site in identification.items()
          for site, found in by_site.items() for pair in found["pairs"]]  # fmt: skip
if panels:
    cols = max(len(found["pairs"]) for by_site in identification.values()
               for found in by_site.values())  # fmt: skip
    rows = len(panels) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols + 0.8, 2.7 * rows + 0.5),
                             squeeze=False, layout="constrained")  # fmt: skip
    for ax, (cell, site, pair) in zip(axes.flat, panels, strict=True):
        m = np.array(pair["matrix"])
        img = ax.imshow(m, vmin=0, vmax=1, origin="lower")
        ax.scatter(m.argmax(axis=1), range(len(m)), s=90, facecolors="none", edgecolors="red",
                   lw=1.2)  # fmt: skip
        lo, hi = pair["ci"]
        ax.set_title(f"{cell}, {site}\n{pair['fraction']:.0%} identified [{lo:.0%}, {hi:.0%}]",
                     fontsize=7)  # fmt: skip
        ax.set_xlabel(f"layer, {pair['runs'][1]}", fontsize=7)
        ax.set_ylabel(f"layer, {pair['runs'][0]}", fontsize=7)
        ax.grid(False)
    fig.colorbar(img, ax=axes, shrink=0.7, label="linear CKA")
    fig.suptitle("Seed against seed at the final milestone (ring: the most similar layer)")
    save_figure(fig, "04_cka_seeds", figures_dir,
                sources=[r.milestones[-1] for g in seeds.values() for r in g])  # fmt: skip
else:
    print("no cell has two seeds: the layer-identification control needs them")
save_results(figures_dir, "cka_layer_identification", identification)
for cell, by_site in identification.items():
    for site, found in by_site.items():
        lo, hi = found["ci"]
        print(f"{cell} {site}: {found['fraction']:.0%} of layers identified, mean over "
              f"{len(found['pairs'])} pairs, 95 % interval [{lo:.0%}, {hi:.0%}]")  # fmt: skip

# %% [markdown]
# ## Within each model: layer × layer at the final milestone

# %%
fig, axes = plt.subplots(1, len(study), figsize=(2.8 * len(study) + 0.8, 2.8), squeeze=False,
                         layout="constrained")  # fmt: skip
for ax, r in zip(axes[0], study, strict=True):
    img = ax.imshow(cka_matrix(acts_at(r.milestones[-1])), vmin=0, vmax=1, origin="lower")
    ax.set_title(r.label, fontsize=8)
    ax.set_xlabel("layer", fontsize=7)
    ax.set_ylabel("layer", fontsize=7)
    ax.grid(False)
fig.colorbar(img, ax=axes, shrink=0.8, label="linear CKA")
save_figure(fig, "04_cka_within", figures_dir, sources=[r.milestones[-1] for r in study])

# %% [markdown]
# ## MLA against GQA, with a seed-vs-seed reference and a random-init floor
#
# Left: the layer × layer matrix at the last shared milestone. Right: CKA of each layer with the
# same layer of the other architecture across training (solid), the same layer of a second seed of
# the MLA cell at the final milestone (dashed: what "as similar as another run of the same model"
# looks like; drawn where that cell has two seeds), and the trained MLA layer against the untrained
# GQA model's (dotted: the floor that token identity alone gives; drawn where the GQA run has a
# step-0 milestone).

# %%
pairs, compared, reference = {}, {}, {}
for mix in sorted({r.mix for r in study}):
    mla, gqa = pick_run(study, "mla", mix), pick_run(study, "gqa", mix)
    if not (mla and gqa):
        continue
    matched = [(a, b) for a, b in shared_milestones(mla, gqa) if a != mla.init]
    keep = {p.name for p in pick_milestones([a for a, _ in matched], 3 if smoke else 6)}
    pairs[mix] = (mla, gqa, [(a, b) for a, b in matched if a.name in keep])
    compared[mix] = compare_runs(pairs[mix][2], sequences, progress=True, drop_first=True)
    last_a, last_b = pairs[mix][2][-1]
    ref = {"mla_vs_gqa_final": np.diag(cka_matrix(acts_at(last_a), acts_at(last_b))).tolist()}
    second = next((r for r in every_run if r.cell == mla.cell and r.seed != mla.seed), None)
    if second:
        same = cka_matrix(acts_at(mla.milestones[-1]), acts_at(second.milestones[-1]))
        ref["seed_vs_seed_final"] = np.diag(same).tolist()
    if gqa.init:
        ref["random_init_floor_final"] = np.diag(
            cka_matrix(acts_at(mla.milestones[-1]), acts_at(gqa.init))
        ).tolist()
    reference[mix] = ref
print("MLA vs GQA pairs on:", list(pairs) or "none (needs one MLA and one GQA run per corpus)")

if pairs:
    fig, axes = plt.subplots(len(pairs), 2, figsize=(9, 3.1 * len(pairs)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.6]})  # fmt: skip
    for i, (mix, rows) in enumerate(compared.items()):
        ax_m, ax_c = axes[i]
        img = ax_m.imshow(np.array(rows[-1]["cka"]), vmin=0, vmax=1, origin="lower")
        ax_m.set_title(f"{mix}: {rows[-1]['tokens'] / 1e6:.3g}M tokens", fontsize=8)
        ax_m.set_xlabel("GQA layer", fontsize=7)
        ax_m.set_ylabel("MLA layer", fontsize=7)
        ax_m.grid(False)
        fig.colorbar(img, ax=ax_m, shrink=0.8)
        tokens = np.array([row["tokens"] for row in rows]) / 1e6
        diag = np.array([np.diag(row["cka"]) for row in rows])
        ref = reference[mix]
        for layer in range(diag.shape[1]):
            color = plt.cm.viridis(layer / max(1, diag.shape[1] - 1))
            ax_c.plot(tokens, diag[:, layer], marker=".", color=color, label=f"layer {layer}")
            if "seed_vs_seed_final" in ref:
                ax_c.axhline(ref["seed_vs_seed_final"][layer], color=color, ls="--", lw=0.9)
            if "random_init_floor_final" in ref:
                ax_c.axhline(ref["random_init_floor_final"][layer], color=color, ls=":", lw=0.9)
        ax_c.set_ylim(0, 1.02)
        ax_c.set_xlabel("tokens (millions)")
        ax_c.set_ylabel("CKA, same layer")
        drawn = ["MLA vs GQA (solid)"]
        drawn += ["MLA seed vs seed (dashed)"] if "seed_vs_seed_final" in ref else []
        drawn += ["MLA vs untrained GQA (dotted)"] if "random_init_floor_final" in ref else []
        ax_c.set_title(", ".join(drawn), fontsize=8)
        ax_c.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    sources = [m for _, _, p in pairs.values() for pair in p for m in pair]
    save_figure(fig, "04_cka_mla_vs_gqa", figures_dir, sources=sources)
save_results(
    figures_dir,
    "cka",
    {"mla_vs_gqa": reference, "site": "resid_post", "first_token_dropped": True,
     "documents": len(sequences), "tokens": int(sum(map(len, sequences)) - len(sequences))},
)  # fmt: skip

# %% [markdown]
# ## CKA of each layer to its final state

# %%
to_final = {}
for r in study:
    chosen = pick_milestones(r.trained, 3 if smoke else 8)
    to_final[r.name] = (chosen, cka_to_final(chosen, sequences, progress=True, drop_first=True))
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
for mix, ref in reference.items():
    print(mix, {k: np.round(v, 3).tolist() for k, v in ref.items()})
