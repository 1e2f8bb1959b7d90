# %% [markdown]
# # 06 — Evaluations
#
# The offline task suite (`labkit eval build-tasks`: nine lm-eval tasks built from the synthetic
# world's held-out data) scored at milestones of every run through the `labkit` lm-eval adapter,
# against each task's random baseline (and the untrained / small-trained baselines when
# `labkit baselines` has stored them in `runs/baselines/`), and the data-scaling fit of validation
# loss against tokens seen, L(D) = a·D^(−b), per run. Results are cached in each run's `evals/`
# and appended to the registry.

# %% tags=["parameters"]
runs = ["../runs/paper-mini"]  # run directories, or directories of runs
smoke = False  # few milestones and documents (CI)
figures_dir = "../figures"
baselines_dir = "../runs/baselines"  # where `labkit baselines` stores its results

# %%
import matplotlib.pyplot as plt
import numpy as np

from labkit.eval.baselines import load_baselines
from labkit.eval.runner import main_metric, milestone_scores
from labkit.eval.stats import power_law_fit
from labkit.eval.tasks import TASKS
from labkit.figures import run_style, save_figure, use_style
from labkit.study import find_runs, pick_milestones

use_style()
study = find_runs(runs)
limit = 4 if smoke else 50  # examples per task
chosen = {r.name: pick_milestones(r.milestones, 2 if smoke else 4) for r in study}
scores = {r.name: milestone_scores(r.path, chosen[r.name], limit, progress=True) for r in study}
baselines = load_baselines(baselines_dir)
print(f"{limit} examples per task; stored baselines: {sorted(baselines) or 'none'}")

# %% [markdown]
# ## Task scores across training

# %%
tasks = list(TASKS)
fig, axes = plt.subplots(3, 3, figsize=(11, 8.5), sharex=True)
for ax, task in zip(axes.flat, tasks, strict=True):
    metric = main_metric(task)
    for r in study:
        rows = scores[r.name]
        ax.plot(
            [x["tokens"] for x in rows],
            [x["scores"][task][metric] for x in rows],
            marker="o",
            label=r.label,
            **run_style(r.attention, r.mix),
        )
    ax.axhline(TASKS[task]["baseline"], color="black", lw=0.8, ls=":", label="random")
    for name, b in baselines.items():
        for kind, ls in (("untrained", "--"), ("trained", "-.")):
            if task in b["scores"].get(kind, {}):
                ax.axhline(
                    np.mean(b["scores"][kind][task]),
                    color="#777777",
                    lw=0.8,
                    ls=ls,
                    label=f"{name} {kind} ({b['steps'][kind]} steps)",
                )
    ax.set_title(f"{task.replace('labkit_', '')} ({metric})")
    ax.set_xscale("log")
for ax in axes[-1]:
    ax.set_xlabel("tokens")
axes.flat[0].legend(fontsize=6)
fig.suptitle(f"The offline suite ({limit} examples per task; dotted: random baseline)")
fig.tight_layout()
save_figure(fig, "06_task_scores", figures_dir, sources=[m for ms in chosen.values() for m in ms])

# %%
print(f"{'task':<22}" + "".join(f"{r.name:>14}" for r in study) + f"{'random':>9}")
for task in tasks:
    metric = main_metric(task)
    cells = "".join(f"{scores[r.name][-1]['scores'][task][metric]:>14.3f}" for r in study)
    print(f"{task:<22}{cells}{TASKS[task]['baseline']:>9.3f}")

# %% [markdown]
# ## Scaling with data: validation loss against tokens
#
# The fit uses the evaluations after the first 10 % of training (the warmup transient left out).
# With one model size in the study, a fit against parameter count needs more sizes: run
# `labkit sweep pretrain/configs/sweeps/architecture.toml` and `labkit report`.

# %%
fig, ax = plt.subplots(figsize=(6, 3.8))
fits = {}
for r in study:
    evals = r.metrics()[1]  # every evaluation of the run, at the tokens it was made
    tokens = np.array([x["tokens"] for x in evals], dtype=float)
    loss = np.array([x["val/mean"] for x in evals])
    style = run_style(r.attention, r.mix)
    ax.scatter(tokens, loss, s=12, color=style["color"])
    late = tokens >= 0.1 * tokens.max()
    if late.sum() >= 2:
        fits[r.name] = power_law_fit(tokens[late], loss[late])
        xs = np.geomspace(tokens[late].min(), tokens.max(), 50)
        ax.plot(xs, fits[r.name](xs), label=f"{r.label}: b = {fits[r.name].b:.3f}", **style)
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("tokens")
ax.set_ylabel("mean validation loss")
ax.set_title("L(D) = a·D^(−b), fitted per run")
ax.legend(fontsize=7)
save_figure(fig, "06_scaling", figures_dir, sources=[r.path for r in study])

# %%
for name, fit in fits.items():
    print(f"{name}: L = {fit.a:.3g} D^-{fit.b:.4f} (R² in log space {fit.r2:.3f})")
