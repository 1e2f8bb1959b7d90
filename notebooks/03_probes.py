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
# # 03 — Probes against baselines
#
# Linear probes on the residual stream (`resid_post`) for the shipped probe targets (`probes/`).
# Every number is on **held-out test documents**: the documents of a target are split 50/20/30
# into train / validation / test *by document* (no document contributes to two splits); the layer
# and the regularisation strength are chosen on the validation documents only, and that one probe
# is scored once on test (accuracy, or R² for regression targets) with a 95 % bootstrap interval
# over test documents (error bars). A probe's score means little alone, so each target is set
# against baselines, all on the same documents and the same splits:
#
# - **null** — what the same procedure reaches when the label carries no information about the
#   representation. Document-level labels (`document_mean`, `question_end`, … positions): the
#   labels are *permuted across the train and validation documents*, the probe refit (layer chosen
#   again on validation) and scored against the true test labels; mean over a few permutations,
#   bar = their spread. Token / entity / span labels: the Hewitt & Liang (2019) control task (one
#   random label per token type or entity), scored against the control labels. (A per-document
#   random label cannot transfer to unseen documents, so it is no null for document labels.)
# - **init** — the same architecture at step 0 (the run's `tokens_000000000000` milestone,
#   written with `checkpoint.save_init = true`), same data, splits and layer selection: what
#   random features of the input already give away. Missing (and never invented) when the run
#   has no step-0 milestone.
# - **bag-of-tokens** — logistic (ridge) regression on the token counts of what the probe reads:
#   the whole document for document-mean probes; for position probes, the causal context up to
#   the position plus the identity of the token read. What lexical statistics alone give away.
# - **position** (token targets) — the same on a one-hot of the token's position alone: where in
#   a document a token sits gives many context labels away (later tokens are more often repeats).
# - **majority** — the training majority class (R² of the training mean for regression).
# - **digit count** (`number_value` only) — ridge on the number of digits of the stated number:
#   log10(value) is mostly its digit count, a surface feature a model can copy from the text.
#
# **Rule for "beats every baseline"** (★ in the final figure): the probe's 95 % CI *low* lies above
# every baseline's *upper bar* — the CI high of the init, bag-of-tokens and digit-count baselines,
# the largest permutation (or control) repeat of the null, and the majority's point value. A
# missing baseline (no step-0 milestone) counts as not beaten.
#
# Two kinds of target. The **document labels** (domain, style, ... -- the generator writes them
# into the words of the document) are lexical: a bag of the document's tokens is close to their
# ceiling, so beating it is the only claim worth making. The **context targets** label a token by
# what came before it -- `seen_before` (the token occurred earlier in the document), `since_last`
# (how far back), `repeat_mention` (this person was named before), `code_in_string` and
# `code_bracket_depth` (Python code), `number_value` (a multi-token number's value) -- so the
# token itself and a bag of the tokens before it cannot give them away; their selectivity (the
# accuracy minus the control task's, Hewitt & Liang 2019) is reported beside the baselines.
#
# What the figures can show: whether linear information about a label is present in a layer of
# the trained model beyond what the input's tokens, random features and chance explain. What they
# cannot show: that the model *uses* that information (probing is correlational; causal claims
# need interventions), anything about a target whose test set is small (n is reported), or
# differences between runs smaller than the intervals (the CIs are per run, not paired).
#
# **Your own runs:** `make lab RUNS=runs/mine`, or set `runs` in the next cell (or run it headless
# with `LABKIT_RUNS=runs/mine jupyter nbconvert --execute`); their figures then go to
# `runs/mine/figures`, never into the committed `figures/`, which only the study's own runs
# (`runs/paper-mini`) rewrite.

# %% tags=["parameters"]
# Other runs: set `runs` here, or start the lab with `make lab RUNS=runs/mine`. Their figures
# then go to <first run>/figures, never into the committed figures/.
runs = None  # run directories, or directories of runs (None: $LABKIT_RUNS, else the study)
smoke = False  # few documents, targets and milestones (CI)
figures_dir = None  # None: ../figures for the committed study, else <first run>/figures

# %%
import matplotlib.pyplot as plt
import numpy as np

from labkit.analysis.probe_tasks import load_probe_spec, probe_targets
from labkit.analysis.probing import probe_set
from labkit.figures import notebook_inputs, run_style, save_figure, save_results
from labkit.run import find_runs, main_runs, pick_milestones
from labkit.study import probe_against_baselines, probe_layers_over_milestones

runs, figures_dir = notebook_inputs(runs, figures_dir)
# The main run of each attention kind on the dense corpus (the other runs: same analysis, more
# minutes -- `labkit figures --notebooks 03` with `probe_mixes` widened): each run costs about
# 2.5 CPU-minutes for every target and its baselines.
probe_mixes = ["dense"]
study = [r for r in main_runs(find_runs(runs)) if r.mix in probe_mixes] or find_runs(runs)[:1]
documents = 60 if smoke else None  # None: the spec's count (1,100 -> >= 300 test documents)
n_null = 2 if smoke else 3  # permutations (or control-task repeats) of the null
CONTEXT_TARGETS = ["seen_before", "since_last", "repeat_mention", "code_in_string",
                   "code_bracket_depth", "number_value"]  # fmt: skip
targets = ["domain", "seen_before", "number_value"] if smoke else probe_targets()
targets = [t for t in CONTEXT_TARGETS if t in targets] + [t for t in targets if t not in
                                                          CONTEXT_TARGETS]  # fmt: skip
over_training = ["domain", "seen_before"] if smoke else ["seen_before", "repeat_mention",
                                                         "number_value", "domain"]  # fmt: skip
specs = {t: load_probe_spec(t, max_documents=documents) for t in targets}

# A target's documents, splits and baseline features depend on the data set (and context length)
# only: build them once and share them between the runs trained on the same data.
_sets: dict = {}


def context(run):
    """The text length probes read: the context the run trained on. Smoke: the model's whole
    context, since the CI corpus holds too few labelled spans within the trained one."""
    return run.model.max_seq_len if smoke else run.context


def sets_for(run, names):
    key = (str(run.data_path), context(run), run.model.bos_token_id)
    if key not in _sets:
        _sets[key] = {
            t: probe_set(specs[t], run.data_path, context(run), bos=run.model.bos_token_id)
            for t in targets
        }
    return {t: _sets[key][t] for t in names}


# %% [markdown]
# ## Every target at the final milestone

# %%
final = {}
for r in study:
    if r.init is None:
        print(f"{r.name}: no step-0 milestone -- init baseline missing (None)")
    final[r.name] = probe_against_baselines(
        r.trained[-1], r.init, sets_for(r, targets), n_null=n_null
    )

KEYS = ["accuracy", "ci", "null", "null_sd", "null_max", "null_kind", "init_baseline", "init_ci",
        "bow_baseline", "bow_ci", "position_baseline", "position_ci", "selectivity",
        "majority_baseline", "layer", "val_accuracy", "n_test_documents",
        "n_val_documents", "n_train_documents", "n_test_examples", "beats_all_baselines", "beats",
        "task", "milestone", "tokens", "init_milestone"]  # fmt: skip
results = {
    r.name: {
        t: {k: v for k, v in res.items() if k in KEYS or k.startswith("digit_count")}
        | ({"init_missing": res["init_missing"]} if "init_missing" in res else {})
        for t, res in final[r.name].items()
    }
    for r in study
}
save_results(figures_dir, "probes", results)

# %%
MARKS = [  # baseline, colour, marker
    ("null", "#7f7f7f", "x"),
    ("init", "#2ca02c", "s"),
    ("bow", "#ff7f0e", "D"),
    ("position", "#17becf", "v"),
    ("digit_count", "#9467bd", "^"),
]
cols = 4
rows_n = int(np.ceil(len(targets) / cols))
fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.6 * rows_n + 0.6), squeeze=False,
                         layout="constrained")  # fmt: skip
for ax, t in zip(axes.flat, targets, strict=False):
    for k, r in enumerate(study):
        res = final[r.name][t]
        style = run_style(r.attention, r.mix)
        ax.errorbar(k - 0.24, res["accuracy"], yerr=[[res["accuracy"] - res["ci"][0]],
                    [res["ci"][1] - res["accuracy"]]], fmt="o", color=style["color"],
                    ms=5, capsize=2,
                    label="probe" if k == 0 else None)  # fmt: skip
        for j, (name, color, marker) in enumerate(MARKS):
            value = res.get(f"{name}_baseline", res.get(name)) if name != "null" else res["null"]
            if value is None:
                continue
            if name == "null":
                err = [[res["null_sd"]], [res["null_sd"]]]
            else:
                lo, hi = res[f"{name}_ci"]
                err = [[value - lo], [hi - value]]
            ax.errorbar(k - 0.08 + 0.1 * j, value, yerr=err, fmt=marker, color=color, ms=3,
                        capsize=1.5, lw=0.8, label=name if k == 0 else None)  # fmt: skip
        ax.hlines(res["majority_baseline"], k - 0.35, k + 0.35, color="black", lw=0.8,
                  linestyles=":", label="majority" if k == 0 else None)  # fmt: skip
        if res["beats_all_baselines"]:
            ax.annotate("★", (k - 0.24, res["ci"][1]), ha="center", va="bottom", fontsize=10)
    metric = "R²" if final[study[0].name][t]["task"] == "regression" else "accuracy"
    n = min(final[r.name][t]["n_test_documents"] for r in study)
    kind = "context" if t in CONTEXT_TARGETS else "document label"
    ax.set_title(f"{t} ({kind}; {metric}, n_test={n})", fontsize=7)
    ax.set_xticks(range(len(study)), [r.name for r in study], rotation=40, ha="right", fontsize=6)
    ax.tick_params(axis="y", labelsize=6)
for ax in list(axes.flat)[len(targets) :]:
    ax.axis("off")
legend = {}  # every marker once (digit count appears on number_value's panel only)
for ax in axes.flat:
    for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
        legend.setdefault(label, handle)
fig.legend(legend.values(), legend.keys(), loc="outside lower center", fontsize=7, ncol=7)
fig.suptitle("Probes at the final milestone on test documents (95 % CI); ★ = CI low above every "
             "baseline's upper bar", fontsize=8)  # fmt: skip
save_figure(
    fig,
    "03_probe_targets",
    figures_dir,
    sources=[m for r in study for m in (r.milestones[-1], r.init) if m],
)

# %%
print(f"{'target':<24}" + "".join(f"{r.name[-28:]:>30}" for r in study))
print(" " * 24 + "   (test score / null / init / bow / position; * = beats every baseline)")
for t in targets:
    cells = []
    for r in study:
        x = final[r.name][t]
        init = "—" if x["init_baseline"] is None else f"{x['init_baseline']:.2f}"
        pos = "" if x.get("position_baseline") is None else f" {x['position_baseline']:.2f}"
        star = "*" if x["beats_all_baselines"] else " "
        cells.append(f"{x['accuracy']:.2f}{star} {x['null']:.2f} {init} {x['bow_baseline']:.2f}"
                     f"{pos}")  # fmt: skip
    print(f"{t:<24}" + "".join(f"{c:>30}" for c in cells))

# %% [markdown]
# ## Layer × milestone (dense runs)
#
# Test score of every layer at a few milestones (the first column is step 0 when the run has it),
# each layer with its regularisation chosen on validation; the box marks the layer validation
# picks. Descriptive: reading the best cell of this grid off the test scores would be choosing
# on test, which is why the reported numbers above come from the validation-chosen layer.

# %%
dense = [r for r in study if r.mix == "dense"] or study[:1]
for r in dense:
    chosen = pick_milestones(r.trained, 2 if smoke else 4)
    chosen = ([r.init] if r.init is not None else []) + chosen
    rows = probe_layers_over_milestones(chosen, sets_for(r, over_training))
    fig, axes = plt.subplots(1, len(over_training), figsize=(3.2 * len(over_training), 3.1),
                             squeeze=False, layout="constrained")  # fmt: skip
    for ax, t in zip(axes[0], over_training, strict=True):
        layers = sorted(rows[t][0]["scores"])
        grid = np.array([[row["scores"][layer] for row in rows[t]] for layer in layers])
        img = ax.imshow(grid, vmin=min(0, grid.min()), vmax=1, aspect="auto", origin="lower",
                        cmap="magma")  # fmt: skip
        for (y, x), v in np.ndenumerate(grid):
            ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if v < 0.5 else "black")  # fmt: skip
        for x, row in enumerate(rows[t]):
            ax.add_patch(plt.Rectangle((x - 0.5, layers.index(row["chosen_layer"]) - 0.5), 1, 1,
                                       fill=False, ec="#00bfff", lw=1.5))  # fmt: skip
        ax.set_xticks(range(len(rows[t])), [f"{row['tokens'] / 1e6:.2g}M" for row in rows[t]],
                      fontsize=6)  # fmt: skip
        ax.set_yticks(range(len(layers)), layers)
        ax.grid(False)
        metric = "R²" if specs[t].get("task") == "regression" else "accuracy"
        ax.set_title(f"{t} ({metric})", fontsize=8)
        ax.set_xlabel("tokens")
        ax.set_ylabel("layer")
    fig.colorbar(img, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(f"{r.label} ({r.name}): test score per layer x milestone; box = chosen on "
                 "validation", fontsize=8)  # fmt: skip
    save_figure(fig, f"03_probe_layers_{r.name}", figures_dir, sources=chosen)
