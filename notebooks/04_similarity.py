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
# Linear CKA (Kornblith et al. 2019) between residual streams (`resid_post`), all on the same
# held-out documents of the `general` split. A CKA value means little alone: a trained layer and
# an untrained one already share token identity, and two seeds of one model are not identical. So:
#
# 1. **Positive control** — Kornblith et al.'s test: between two seeds of the same cell, does CKA
#    find the corresponding layer (argmax over the other seed's layers)? A similarity index that
#    fails it cannot be trusted to compare architectures. Reported as
#    `cka_layer_identification.<cell>` in `results.json`.
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

from labkit.analysis.similarity import cka_matrix, layer_identification
from labkit.figures import notebook_inputs, run_style, save_figure, save_results
from labkit.run import (
    find_runs,
    main_runs,
    pick_milestones,
    pick_run,
    seed_groups,
    shared_milestones,
)
from labkit.study import cka_to_final, compare_runs, eval_sequences, layer_activations

runs, figures_dir = notebook_inputs(runs, figures_dir)
every_run = find_runs(runs)
study = main_runs(every_run)
documents, max_len = (8, 32) if smoke else (64, 128)
sequences = eval_sequences(study[0].data_path, "general", documents, max_len)
print(f"{len(sequences)} documents, {sum(map(len, sequences)):,} tokens")
final_acts = {}


def acts_at(milestone):
    """Per-layer activations of a milestone on `sequences`, computed once."""
    if milestone not in final_acts:
        final_acts[milestone] = layer_activations(milestone, sequences)
    return final_acts[milestone]


def cell_name(runs_of_cell):
    r = runs_of_cell[0]
    extra = "".join(f"-{k}{v}" for k, v in r.variant.items())
    return f"{r.attention}-{r.mix}{extra}"


# %% [markdown]
# ## The positive control: two seeds, corresponding layers
#
# Rows: seed A's layers; columns: seed B's; a ring marks each row's most similar layer. The
# control passes when every ring sits on the diagonal.

# %%
seeds = seed_groups(every_run)
identification, seed_matrices = {}, {}
for group in seeds.values():
    a, b = group[0], group[1]
    seed_matrices[cell_name(group)] = (
        a,
        b,
        cka_matrix(acts_at(a.milestones[-1]), acts_at(b.milestones[-1])),
    )
for name, (a, b, m) in seed_matrices.items():
    identification[name] = layer_identification(m) | {"runs": [a.name, b.name], "matrix": m}
if seed_matrices:
    fig, axes = plt.subplots(
        1, len(seed_matrices), figsize=(3.2 * len(seed_matrices) + 0.8, 3.1), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for ax, (name, (a, b, m)) in zip(axes[0], seed_matrices.items(), strict=True):
        img = ax.imshow(m, vmin=0, vmax=1, origin="lower")
        best = m.argmax(axis=1)
        ax.scatter(best, range(len(m)), s=90, facecolors="none", edgecolors="red", lw=1.2)
        ax.set_title(f"{name}: {identification[name]['fraction']:.0%} identified", fontsize=8)
        ax.set_xlabel(f"layer, seed {b.seed}", fontsize=7)
        ax.set_ylabel(f"layer, seed {a.seed}", fontsize=7)
        ax.grid(False)
    fig.colorbar(img, ax=axes, shrink=0.8, label="linear CKA")
    fig.suptitle("Seed against seed at the final milestone (ring: the most similar layer)")
    save_figure(
        fig,
        "04_cka_seeds",
        figures_dir,
        sources=[m for g in seeds.values() for r in g[:2] for m in r.milestones[-1:]],
    )
else:
    print("no cell has two seeds: the layer-identification control needs them")
save_results(
    figures_dir, "cka_layer_identification", {n: v["fraction"] for n, v in identification.items()}
)

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
    compared[mix] = compare_runs(pairs[mix][2], sequences, progress=True)
    last_a, last_b = pairs[mix][2][-1]
    ref = {"mla_vs_gqa_final": np.diag(cka_matrix(acts_at(last_a), acts_at(last_b))).tolist()}
    twins = [g for g in seeds.values() if g[0].cell == mla.cell]
    if twins:
        second = next(r for r in twins[0] if r.seed != mla.seed)
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
        ax_c.set_title("MLA vs GQA (solid), seed vs seed (dashed), vs untrained GQA (dotted)",
                       fontsize=8)  # fmt: skip
        ax_c.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    sources = [m for _, _, p in pairs.values() for pair in p for m in pair]
    save_figure(fig, "04_cka_mla_vs_gqa", figures_dir, sources=sources)
save_results(
    figures_dir,
    "cka",
    {"layer_identification": identification, "mla_vs_gqa": reference, "site": "resid_post",
     "documents": len(sequences), "tokens": int(sum(map(len, sequences)))},
)  # fmt: skip

# %% [markdown]
# ## CKA of each layer to its final state

# %%
to_final = {}
for r in study:
    chosen = pick_milestones(r.trained, 3 if smoke else 8)
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
for name, v in identification.items():
    print(f"{name}: seeds {v['runs']}: {v['fraction']:.0%} of layers identified, "
          f"margins {np.round(v['margin'], 3).tolist()}")  # fmt: skip
for mix, ref in reference.items():
    print(mix, {k: np.round(v, 3).tolist() for k, v in ref.items()})
