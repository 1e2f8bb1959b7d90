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
# # 07 — Sparse autoencoders on the MLA latent `c_kv`
#
# What does the latent hold, and when does it start holding it? At every picked milestone of the
# MLA runs (the dense corpus and the control), a TopK sparse autoencoder (EleutherAI's sparsify,
# width 8 x `kv_lora_rank`, 8 active features per token) is trained on `hook_kv_latent` of every
# layer, from the activations of the first 1,000 training documents, and read on held-out text:
#
# - **reconstruction**: explained variance, L0, the share of dead features;
# - **CE loss recovered** when the SAE is spliced in at its hook: (zero-ablated - spliced) /
#   (zero-ablated - clean), with a bootstrap interval over documents. Where zero-ablating the
#   latent costs almost nothing (step 0), the ratio is undefined and the losses themselves are
#   drawn instead;
# - **label alignment**: each feature's best F1 of "fires" against "label holds" over the corpus's
#   ground-truth labels (digit, seen earlier in the document, distance to its last occurrence,
#   bracket depth, a cast member's occupation at its mention, format, domain, position), and the
#   share of features beating a null that shifts the labels against the tokens (corrected for the
#   features that sampling noise alone lifts over the null, as the bootstrap measures it);
# - **drift**: features of consecutive milestones' SAEs matched one to one by decoder cosine
#   (Hungarian), against the same match between two SAEs (two seeds) of one milestone, the floor
#   below which a change between milestones cannot be told from the SAE's own noise.
#
# The step-0 model is a reference, not a curiosity: its latent is a fixed random projection of the
# token embedding, so features that detect single tokens already align with lexical labels
# (a digit) there. A trained latent is interesting where it beats its own step 0.
#
# For comparison, at the final milestone: the residual stream of the same layers (`resid_post`) in
# the MLA runs, and the GQA runs' keys and values (`hook_k`, `hook_v`), the closest thing GQA
# caches.
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

from labkit.analysis.sae import SAEConfig
from labkit.figures import notebook_inputs, run_style, save_figure, save_results
from labkit.run import find_runs, main_runs, pick_milestones
from labkit.study import NEW_FEATURE_COSINE, sae_over_milestones

runs, figures_dir = notebook_inputs(runs, figures_dir)
every_run = find_runs(runs)
mla_runs = main_runs([r for r in every_run if r.attention == "mla"])  # one per corpus
gqa_runs = main_runs([r for r in every_run if r.attention == "gqa"])
if not mla_runs:
    raise ValueError(f"no MLA run among {runs}: the latent exists only in MLA models")
n_layers = mla_runs[0].model.n_layers
layers = [0] if smoke else list(range(n_layers))
cfg = SAEConfig(epochs=1) if smoke else SAEConfig()
documents, train_docs = (4, 50) if smoke else (64, 1000)
MIN_GAP = 0.01  # nats: below this zero-ablation cost, CE loss recovered is left undefined
chosen = {r.name: pick_milestones(r.milestones, 2 if smoke else 4) for r in mla_runs}


def saes(milestones, site, layer):
    """An SAE per milestone on `site` at `layer`, with the seed baseline and (full runs) labels."""
    return sae_over_milestones(milestones, site, layer, cfg, documents, train_docs,
                               labels=not smoke, progress=True)  # fmt: skip


sae = {r.name: {layer: saes(chosen[r.name], "kv_latent", layer) for layer in layers}
       for r in mla_runs}  # fmt: skip
# the comparison sites, at each run's final milestone
others = [(r, "resid_post") for r in mla_runs] + [(r, s) for r in gqa_runs for s in ("k", "v")]
compared = {
    (r.name, site): {
        layer: saes(r.milestones[-1:], site, layer)["milestones"][0] for layer in layers
    }
    for r, site in others
}
sources = [m for ms in chosen.values() for m in ms] + [r.milestones[-1] for r, _ in others]


def rows(name, layer):
    return sae[name][layer]["milestones"]


def millions(rs):
    return np.array([row["tokens"] for row in rs]) / 1e6


def token_axis(ax):
    ax.set_xscale("symlog", linthresh=0.1)  # step 0 sits at 0
    ax.set_xlim(left=-0.02)
    ax.set_xlabel("tokens (millions; 0 = step 0)")


layer_color = {layer: plt.cm.viridis(layer / max(1, n_layers - 1) * 0.85) for layer in layers}

# %% [markdown]
# ## Reconstruction and the loss it keeps
#
# Left to right: explained variance of held-out `c_kv`; the share of dead features; the CE loss
# recovered with its 95 % bootstrap interval (1 = the SAE costs nothing, 0 = as bad as zeroing the
# latent; milestones where zeroing costs under 0.01 nats are left out, the ratio of two near-equal
# losses means nothing there); and what zeroing the latent costs, in nats above the clean loss
# (symmetric log scale, linear within 0.01; below zero, zeroing helped): how much the model relies
# on `c_kv` at all.

# %%
fig, axes = plt.subplots(1, 4, figsize=(15, 3.5), layout="constrained")
ax_ev, ax_dead, ax_ce, ax_loss = axes
for r in mla_runs:
    ls = run_style(r.attention, r.mix)["linestyle"]
    for layer in layers:
        rs, color = rows(r.name, layer), layer_color[layer]
        x = millions(rs)
        label = f"{r.mix}, layer {layer}"
        kw = dict(color=color, linestyle=ls, marker=".")
        ax_ev.plot(x, [row["explained_variance"] for row in rs], label=label, **kw)
        ax_dead.plot(x, [row["dead_fraction"] for row in rs], **kw)
        gap = np.array([row["loss_zero_ablated"] - row["loss_clean"] for row in rs])
        ok = gap >= MIN_GAP
        ce = np.array([row["ce_loss_recovered"] for row in rs])
        ci = np.array([row["ce_loss_recovered_ci"] for row in rs])
        yerr = np.clip([ce[ok] - ci[ok, 0], ci[ok, 1] - ce[ok]], 0, None)
        ax_ce.errorbar(x[ok], ce[ok], yerr=yerr, capsize=2, **kw)
        ax_loss.plot(x, gap, **kw)
ax_ev.set_title("explained variance (held out)")
ax_dead.set_title("dead features")
ax_ce.set_title("CE loss recovered (95 % CI)")
ax_ce.axhline(1, color="black", lw=0.8, ls=":")
ax_ce.set_ylim(-0.5, 2)  # intervals past these limits are cut
ax_loss.set_title("loss added by zeroing c_kv (nats)")
ax_loss.set_yscale("symlog", linthresh=MIN_GAP)  # linear within +-0.01: zero and below drawn
ax_loss.axhline(MIN_GAP, color="black", lw=0.8, ls=":")
ax_loss.axhline(0, color="black", lw=0.5)
for ax in axes:
    token_axis(ax)
ax_ev.legend(fontsize=6)
fig.suptitle(f"TopK SAEs on c_kv (width {cfg.width_multiple} x kv_lora_rank, k = {cfg.k}); "
             "solid: dense corpus, dashed: control", fontsize=9)  # fmt: skip
save_figure(fig, "07_sae_reconstruction", figures_dir, sources=sources)

# %% [markdown]
# ## Features against the corpus's ground truth
#
# Left: the share of firing features whose best label beats the shift null's 95th percentile,
# bias-corrected, with its 95 % basic bootstrap interval over documents, per layer and corpus
# (step 0 at the left). Right: at the final milestone, which labels the aligned features match,
# summed over layers.

# %%
if not smoke:
    fig, (ax_al, ax_bar) = plt.subplots(1, 2, figsize=(12, 3.8), layout="constrained")
    for r in mla_runs:
        ls = run_style(r.attention, r.mix)["linestyle"]
        for layer in layers:
            rs = rows(r.name, layer)
            al = np.array([row["label_aligned_fraction"] for row in rs])
            ci = np.array([row["label_aligned_ci"] for row in rs])
            yerr = np.clip([al - ci[:, 0], ci[:, 1] - al], 0, None)
            ax_al.errorbar(millions(rs), al, yerr=yerr, capsize=2,
                           color=layer_color[layer], linestyle=ls, marker=".",
                           label=f"{r.mix}, layer {layer}")  # fmt: skip
    token_axis(ax_al)
    ax_al.set_ylabel("share of features aligned with a label")
    ax_al.legend(fontsize=6)
    counts = {}
    for r in mla_runs:
        for layer in layers:
            for feature in rows(r.name, layer)[-1]["top_features"]:
                label = feature["label"].split("=")[0]
                counts.setdefault(label, {}).setdefault(r.mix, 0)
                counts[label][r.mix] += 1
    labels = sorted(counts)
    width = 0.8 / len(mla_runs)
    for i, r in enumerate(mla_runs):
        ax_bar.bar(np.arange(len(labels)) + i * width, [counts[k].get(r.mix, 0) for k in labels],
                   width, label=r.mix, **{"color": run_style(r.attention, r.mix)["color"],
                                          "alpha": 1 - 0.5 * i})  # fmt: skip
    ax_bar.set_xticks(np.arange(len(labels)) + width * (len(mla_runs) - 1) / 2, labels,
                      rotation=30, ha="right", fontsize=7)  # fmt: skip
    ax_bar.set_ylabel("features among each SAE's 10 best aligned")
    ax_bar.legend(fontsize=7)
    ax_bar.set_title("what the best-aligned features match (final milestone)")
    fig.suptitle("c_kv features read against ground-truth labels (shift null, 95 %)", fontsize=9)
    save_figure(fig, "07_sae_labels", figures_dir, sources=sources)

# %% [markdown]
# ## Birth and drift of features
#
# The median decoder cosine of matched feature pairs between the previous milestone's SAE and this
# one's (filled), against two seeds' SAEs of the same milestone (open). Each milestone's pair is
# taken across seeds too (the previous milestone's first seed against this one's second), since
# two SAEs of one seed share their initialisation and look alike for that reason alone. Where the
# two lines meet, the features changed no more between milestones than between two SAEs of one
# model. Right: the share of features whose match is below cosine 0.7 (new, or not reproduced).

# %%
fig, (ax_cos, ax_new) = plt.subplots(1, 2, figsize=(11, 3.5), layout="constrained")
for r in mla_runs:
    ls = run_style(r.attention, r.mix)["linestyle"]
    for layer in layers:
        rs, color = rows(r.name, layer), layer_color[layer]
        later = [row for row in rs if "matched_cosine" in row]
        ax_cos.plot(millions(later), [row["matched_cosine"] for row in later], color=color,
                    linestyle=ls, marker="o", label=f"{r.mix}, layer {layer}")  # fmt: skip
        ax_cos.plot(millions(rs), [row["seed_matched_cosine"] for row in rs], color=color,
                    linestyle=ls, marker="o", mfc="none", lw=0.6)  # fmt: skip
        ax_new.plot(millions(later), [row["new_features"] for row in later], color=color,
                    linestyle=ls, marker="o")  # fmt: skip
        ax_new.plot(millions(rs), [row["seed_new_features"] for row in rs], color=color,
                    linestyle=ls, marker="o", mfc="none", lw=0.6)  # fmt: skip
ax_cos.set_title("median matched decoder cosine: previous milestone (●), other seed (○)")
ax_new.set_title(f"features matched below cosine {NEW_FEATURE_COSINE}")
for ax in (ax_cos, ax_new):
    token_axis(ax)
    ax.set_ylim(0, 1.03)  # room for the markers at 1
ax_cos.legend(fontsize=6)
save_figure(fig, "07_sae_drift", figures_dir, sources=sources)

# %% [markdown]
# ## The latent against the residual stream and GQA's keys and values
#
# At the final milestone, the same SAE recipe on each site of the same layers: `c_kv` and
# `resid_post` in the MLA runs, `hook_k` and `hook_v` in the GQA runs (width 8 x the site's
# width each). CE loss recovered is left out where zeroing the site costs under 0.01 nats.

# %%
sites = [(r, "kv_latent", {layer: rows(r.name, layer)[-1] for layer in layers}) for r in mla_runs]
sites += [(r, site, compared[r.name, site]) for r, site in others]
measures = [
    ("explained_variance", None, "explained variance"),
    ("ce_loss_recovered", "ce_loss_recovered_ci", "CE loss recovered (95 % CI)"),
]
if not smoke:
    measures.append(("label_aligned_fraction", "label_aligned_ci", "label-aligned share (95 % CI)"))
fig, axes = plt.subplots(1, len(measures), figsize=(4.6 * len(measures), 3.6),
                         layout="constrained", squeeze=False)  # fmt: skip
width = 0.8 / len(sites)
for ax, (key, ci_key, title) in zip(axes[0], measures, strict=True):
    for i, (r, site, by_layer) in enumerate(sites):
        values = np.array([by_layer[layer][key] for layer in layers], dtype=float)
        if key == "ce_loss_recovered":  # undefined where zeroing the site costs almost nothing
            gaps = [by_layer[la]["loss_zero_ablated"] - by_layer[la]["loss_clean"] for la in layers]
            values[np.array(gaps) < MIN_GAP] = np.nan
        err = None
        if ci_key:
            ci = np.array([by_layer[layer][ci_key] for layer in layers], dtype=float)
            err = np.nan_to_num(np.clip([values - ci[:, 0], ci[:, 1] - values], 0, None))
        style = run_style(r.attention, r.mix)
        ax.bar(np.arange(len(layers)) + i * width, values, width, yerr=err, capsize=2,
               color=style["color"], alpha=1.0 if site in ("kv_latent", "k") else 0.5,
               hatch="//" if r.mix != "dense" else None, edgecolor="white",
               label=f"{r.attention} {r.mix} {site}")  # fmt: skip
    ax.set_xticks(np.arange(len(layers)) + width * (len(sites) - 1) / 2,
                  [f"layer {layer}" for layer in layers])  # fmt: skip
    ax.set_title(title)
    if key == "ce_loss_recovered":
        ax.set_ylim(-0.5, 1.5)
fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize=7)
fig.suptitle("One SAE recipe on four sites at the final milestone (hatched: control corpus)",
             fontsize=9)  # fmt: skip
save_figure(fig, "07_sae_sites", figures_dir, sources=sources)

# %% [markdown]
# ## Results
#
# `sae.<run>.<site>.<layer>` in results.json: per picked milestone (`milestone_tokens`), `l0`,
# `explained_variance`, `dead_fraction`, `ce_loss_recovered` (null where zeroing the site costs
# under 0.01 nats) with `ce_loss_recovered_ci`, `label_aligned_fraction` (corrected for the
# features that sampling noise lifts over the null threshold) with `label_aligned_fraction_ci`
# and the uncorrected count `label_aligned_raw`, `matched_cosine` to the previous milestone's SAE
# (null at the first) and `seed_matched_cosine`; the comparison sites hold their final milestone
# only.

# %%
KEYS = ("l0", "explained_variance", "dead_fraction", "dense_fraction", "seed_matched_cosine",
        "new_features", "seed_new_features", "loss_clean", "loss_zero_ablated",
        "loss_spliced")  # fmt: skip


def summary(rs):
    out = {"milestone_tokens": [row["tokens"] for row in rs], "width": rs[0]["width"],
           "k": rs[0]["k"], "train_tokens": rs[0]["train_tokens"],
           "eval_tokens": rs[0]["eval_tokens"]}  # fmt: skip
    for key in KEYS:
        out[key] = [row.get(key) for row in rs]
    defined = [row["loss_zero_ablated"] - row["loss_clean"] >= MIN_GAP for row in rs]
    out["ce_loss_recovered"] = [row["ce_loss_recovered"] if ok else None
                                for row, ok in zip(rs, defined, strict=True)]  # fmt: skip
    out["ce_loss_recovered_ci"] = [row["ce_loss_recovered_ci"] if ok else None
                                   for row, ok in zip(rs, defined, strict=True)]  # fmt: skip
    out["matched_cosine"] = [row.get("matched_cosine") for row in rs]
    if "label_aligned_fraction" in rs[0]:
        out["label_aligned_fraction"] = [row["label_aligned_fraction"] for row in rs]
        out["label_aligned_fraction_ci"] = [row["label_aligned_ci"] for row in rs]
        out["label_aligned_raw"] = [row["label_aligned_raw"] for row in rs]
        out["label_null_f1"] = [row["label_null_f1"] for row in rs]
        out["top_features"] = rs[-1]["top_features"]
    return out


results = {r.name: {"kv_latent": {str(layer): summary(rows(r.name, layer)) for layer in layers}}
           for r in mla_runs}  # fmt: skip
for r, site in others:
    results.setdefault(r.name, {})[site] = {
        str(layer): summary([compared[r.name, site][layer]]) for layer in layers
    }
results["config"] = cfg.to_dict() | {"train_documents": train_docs, "documents": documents}
save_results(figures_dir, "sae", results)

for r, site, by_layer in sites:
    for layer in layers:
        row = by_layer[layer]
        aligned = row.get("label_aligned_fraction")
        print(f"{r.name:>12} {site:>10}.{layer}: EV {row['explained_variance']:.3f}, dead "
              f"{row['dead_fraction']:.0%}, CE recovered {row['ce_loss_recovered']:.3f}"
              + ("" if aligned is None else f", label-aligned {aligned:.0%}"))  # fmt: skip
