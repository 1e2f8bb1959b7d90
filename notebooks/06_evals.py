# %% [markdown]
# # 06 — Evaluations
#
# The offline task suite (`labkit eval build-tasks`: nine lm-eval tasks built from the synthetic
# world's held-out data) scored at milestones of each main run through the `labkit` lm-eval
# adapter. Every score carries its 95 % interval: Wilson's for the accuracy and exact-match tasks
# (a proportion of independent items), none for SQuAD-style F1 (not a proportion; its points are
# drawn bare). Two references per task: the random baseline and the same model at step 0 (the
# untrained weights, from the run's step-0 milestone) — a score is a learned skill only where it
# clears both beyond its interval. Stored `labkit baselines` results are drawn when present.
#
# There is no data-scaling fit here: a power law fitted inside one cosine run measures the
# learning-rate schedule as much as the data, and the study trains one token budget. Fit L(D)
# across separate runs at several budgets (`labkit sweep`, `labkit report`).
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
baselines_dir = "../runs/baselines"  # where `labkit baselines` stores its results

# %%
import matplotlib.pyplot as plt
import numpy as np

from labkit.eval.baselines import load_baselines
from labkit.eval.runner import main_metric, milestone_scores, tasks_dir_for
from labkit.eval.stats import wilson_interval
from labkit.eval.tasks import TASKS, suite_sizes
from labkit.figures import notebook_inputs, run_style, save_figure, save_results
from labkit.run import find_runs, main_runs, pick_milestones

runs, figures_dir = notebook_inputs(runs, figures_dir)
study = main_runs(find_runs(runs))
limit = 4 if smoke else 100  # examples per task
# the step-0 milestone (when the run has one) and trained milestones spread in log(tokens)
chosen = {r.name: ([r.init] if r.init else []) + pick_milestones(r.trained, 2) for r in study}
scores = {r.name: milestone_scores(r.path, chosen[r.name], limit, progress=True) for r in study}
baselines = load_baselines(baselines_dir)
print(f"up to {limit} examples per task; stored baselines: {sorted(baselines) or 'none'}")


suite = {r.name: suite_sizes(tasks_dir_for(r.milestones[-1])) for r in study}


def interval(run, task, row):
    """(score, lo, hi, n): Wilson's interval for proportion metrics, none for F1."""
    metric = main_metric(task)
    value = row["scores"][task][metric]
    n = min(limit, suite[run.name][task])
    if metric in ("acc", "exact_match"):
        lo, hi = wilson_interval(round(value * n), n)
        return value, lo, hi, n
    return value, None, None, n


# %% [markdown]
# ## Task scores across training

# %%
tasks = list(TASKS)
fig, axes = plt.subplots(3, 3, figsize=(11, 8.5), sharex=True)
results = {}
for ax, task in zip(axes.flat, tasks, strict=True):
    metric = main_metric(task)
    for r in study:
        rows = scores[r.name]
        got = [interval(r, task, row) for row in rows]
        x = np.array([row["tokens"] for row in rows]) / 1e6
        y = np.array([g[0] for g in got])
        style = run_style(r.attention, r.mix)
        ax.plot(x, y, marker="o", ms=3, label=r.label, **style)
        if got[0][1] is not None:
            lo = np.array([g[1] for g in got])
            hi = np.array([g[2] for g in got])
            ax.fill_between(x, lo, hi, color=style["color"], alpha=0.12, lw=0)
        init = got[0] if r.init else None
        final = got[-1]
        results.setdefault(r.name, {})[task] = {
            "metric": metric, "score": final[0], "ci": [final[1], final[2]], "n": final[3],
            "step0": init[0] if init else None,
            "step0_ci": [init[1], init[2]] if init else None,
            "random_baseline": TASKS[task]["baseline"],
            "beats_step0_and_random": bool(
                init and final[1] is not None and final[1] > max(init[2], TASKS[task]["baseline"])
            ),
        }  # fmt: skip
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
for ax in axes[-1]:
    ax.set_xlabel("tokens (millions; 0 = step 0)")
axes.flat[0].legend(fontsize=6)
fig.suptitle(f"The offline suite (up to {limit} examples per task; bands: Wilson 95 %; "
             "dotted: random)")  # fmt: skip
fig.tight_layout()
save_figure(fig, "06_task_scores", figures_dir, sources=[m for ms in chosen.values() for m in ms])
save_results(figures_dir, "tasks", results)

# %%
print(f"{'task':<22}" + "".join(f"{r.name:>22}" for r in study) + f"{'random':>9}")
for task in tasks:
    cells = ""
    for r in study:
        x = results[r.name][task]
        mark = "*" if x["beats_step0_and_random"] else " "
        step0 = "-" if x["step0"] is None else f"{x['step0']:.2f}"
        cells += f"{x['score']:>12.3f}{mark} (s0 {step0})"
    print(f"{task:<22}{cells}{TASKS[task]['baseline']:>9.3f}")
print("* = the interval's lower end clears both the step-0 interval and the random baseline")
