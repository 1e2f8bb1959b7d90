"""The experiment registry (`runs/index.jsonl`) and `labkit report`: research_report.md and plots.

Registry records are JSON lines. The trainer appends one per finished run (no `kind`, or
`kind: "train"`: config, model, final losses); `labkit eval` one per evaluated milestone
(`kind: "eval"`: scores per task); `labkit baselines` one per baseline set (`kind: "baseline"`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labkit.config import ModelConfig
from labkit.eval.runner import main_metric
from labkit.eval.stats import correlations, mean_ci, paired_ttest, power_law_fit

SPAN = 1.5  # the largest model at least this many times the smallest for a scaling fit


def read_registry(*paths: str | Path) -> list[dict[str, Any]]:
    """Every record of the given index.jsonl files (a missing file is an error naming it)."""
    records = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: train a run (it appends its record) or pass --registry"
            )
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{n} is not JSON: {err}") from err
    return records


def split_records(records: Sequence[dict]) -> tuple[dict[str, dict], list[dict], list[dict]]:
    """(train records by experiment id, eval records, baseline records). A run trained again
    under the same id keeps its latest record."""
    train, evals, baselines = {}, [], []
    for r in records:
        kind = r.get("kind", "train")
        if kind == "train":
            train[r["experiment_id"]] = r
        elif kind == "eval":
            evals.append(r)
        elif kind == "baseline":
            baselines.append(r)
    return train, evals, baselines


def configuration(record: dict) -> str:
    """What an experiment varies, the seed left out: runs differing only by seed share it."""
    cfg = record["config"]
    t = cfg["train"]
    return (
        f"{record['model'].get('name') or cfg['model'].get('preset')} {cfg['data']['mix']} "
        f"lr={t['lr']:g} seq={t['seq_len']} tokens={t['tokens']:,}"
    )


def final_scores(evals: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Each experiment's main-metric score per task at its last evaluated milestone."""
    last: dict[str, dict] = {}
    for r in evals:
        if r["experiment_id"] not in last or r["tokens"] >= last[r["experiment_id"]]["tokens"]:
            last[r["experiment_id"]] = r
    return {
        exp: {t: m[main_metric(t)] for t, m in r["scores"].items() if main_metric(t) in m}
        for exp, r in last.items()
    }


def _params(record: dict, non_embedding: bool = True) -> int:
    fields = {k: v for k, v in record["model"].items() if k != "name"}
    return ModelConfig(**fields).num_params(non_embedding=non_embedding)


def analyse(records: Sequence[dict]) -> dict[str, Any]:
    """Everything the report shows, as numbers (tested on synthetic registries)."""
    train, evals, baselines = split_records(records)
    scores = final_scores(evals)
    groups: dict[str, list[str]] = defaultdict(list)
    for exp, r in train.items():
        groups[configuration(r)].append(exp)
    tasks = sorted({t for s in scores.values() for t in s})
    per_config = {}
    for cfg, exps in sorted(groups.items()):
        with_scores = [e for e in exps if e in scores]
        per_task = {
            t: mean_ci([scores[e][t] for e in with_scores if t in scores[e]]).to_dict()
            for t in tasks
            if any(t in scores[e] for e in with_scores)
        }
        r0 = train[exps[0]]
        losses = [train[e]["final"].get("best_val_mean") for e in exps]
        losses = [x for x in losses if x is not None]
        params = _params(r0)
        tokens = r0["final"]["tokens"]
        mean_score = (
            float(np.mean([np.mean(list(scores[e].values())) for e in with_scores]))
            if with_scores
            else math.nan
        )
        per_config[cfg] = {
            "experiments": sorted(exps),
            "seeds": sorted({train[e]["config"]["seed"] for e in exps}),
            "params_non_embedding": params,
            "tokens": tokens,
            "train_flops": 6 * params * tokens,
            "val_loss": mean_ci(losses).to_dict() if losses else None,
            "tasks": per_task,
            "mean_score": mean_score,
            "score_per_million_params": mean_score / (params / 1e6) if params else math.nan,
            "score_per_pflop": mean_score / (6 * params * tokens / 1e15) if tokens else math.nan,
        }
    # Paired t-tests between configurations: over seeds when two or more seeds match, else
    # over tasks (each task's mean over seeds).
    tests = []
    names = [c for c in per_config if per_config[c]["tasks"]]

    def seed_of(cfg: str) -> dict[int, str]:
        exps = per_config[cfg]["experiments"]
        return {train[e]["config"]["seed"]: e for e in exps if e in scores}

    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            sa, sb = seed_of(a), seed_of(b)
            common = sorted(set(sa) & set(sb))
            shared = sorted(set(per_config[a]["tasks"]) & set(per_config[b]["tasks"]))
            if len(common) >= 2:
                xa = [np.mean([scores[sa[s]][t] for t in shared]) for s in common]
                xb = [np.mean([scores[sb[s]][t] for t in shared]) for s in common]
                paired_over = "seeds"
            elif len(shared) >= 2:
                xa = [per_config[a]["tasks"][t]["mean"] for t in shared]
                xb = [per_config[b]["tasks"][t]["mean"] for t in shared]
                paired_over = "tasks"
            else:
                continue
            tests.append(
                {"a": a, "b": b, "paired_over": paired_over, **paired_ttest(xa, xb).to_dict()}
            )
    # Scaling: loss and error rate (1 - mean score) against non-embedding parameters.
    scaling = {}
    points = [
        (c["params_non_embedding"], c["val_loss"]["mean"], c["mean_score"])
        for c in per_config.values()
        if c["val_loss"]
    ]
    sizes = sorted({p for p, _, _ in points})
    # A fit needs sizes far enough apart: MLA and GQA twins differ by < 1 % and are one size.
    if len(sizes) >= 2 and sizes[-1] >= SPAN * sizes[0]:
        x = [p for p, _, _ in points]
        scaling["loss"] = power_law_fit(x, [loss for _, loss, _ in points]).to_dict()
        errors = [(p, 1 - s) for p, _, s in points if not math.isnan(s) and s < 1]
        if len({p for p, _ in errors}) >= 2:
            scaling["error_rate"] = power_law_fit(*zip(*errors, strict=True)).to_dict()
        scaling["points"] = points
    # Correlations over every evaluated milestone: task against task, and task against loss.
    table: dict[str, list[float]] = defaultdict(list)
    rows = [r for r in evals if all(main_metric(t) in r["scores"].get(t, {}) for t in tasks)]
    for r in rows:
        for t in tasks:
            table[t].append(r["scores"][t][main_metric(t)])
        loss = r.get("val_loss")
        table["val_loss"].append(math.nan if loss is None else loss)
    corr = None
    if len(rows) >= 3 and tasks:
        names_c, matrix = correlations(table)
        corr = {"names": names_c, "matrix": matrix.tolist(), "n": len(rows)}
    return {
        "experiments": {e: train[e] for e in sorted(train)},
        "configurations": per_config,
        "tasks": tasks,
        "baselines": baselines[-1] if baselines else None,
        "ttests": tests,
        "scaling": scaling,
        "correlations": corr,
    }


# ------------------------------------------------------------------------------------- writing
def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _plots(result: dict, out_dir: Path) -> list[str]:
    from labkit.figures import save_figure, use_style

    use_style()
    import matplotlib.pyplot as plt

    made = []
    configs = {c: v for c, v in result["configurations"].items() if v["tasks"]}
    if configs and result["tasks"]:
        tasks = result["tasks"]
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(tasks) + 2), 3.8))
        width = 0.8 / len(configs)
        for k, (name, c) in enumerate(configs.items()):
            means = [c["tasks"].get(t, {}).get("mean", np.nan) for t in tasks]
            lo = [
                m - c["tasks"].get(t, {}).get("ci_low", m)
                for t, m in zip(tasks, means, strict=True)
            ]
            hi = [
                c["tasks"].get(t, {}).get("ci_high", m) - m
                for t, m in zip(tasks, means, strict=True)
            ]
            ax.bar(
                np.arange(len(tasks)) - 0.4 + width * (k + 0.5),
                means,
                width,
                yerr=[lo, hi],
                capsize=2,
                label=name,
            )
        base = result.get("baselines") or {}
        for i, t in enumerate(tasks):
            if t in base.get("random", {}):
                ax.hlines(base["random"][t], i - 0.45, i + 0.45, color="black", lw=1)
        ax.set_xticks(range(len(tasks)), [t.replace("labkit_", "") for t in tasks], rotation=30)
        ax.set_ylabel("score (main metric; black: random)")
        ax.legend(fontsize=6)
        save_figure(fig, "scores", out_dir)
        made.append("scores")
    if result["scaling"].get("points"):
        pts = result["scaling"]["points"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.scatter([p for p, _, _ in pts], [loss for _, loss, _ in pts])
        fit = result["scaling"]["loss"]
        xs = np.geomspace(min(p for p, _, _ in pts), max(p for p, _, _ in pts), 50)
        ax.plot(xs, fit["a"] * xs ** (-fit["b"]), label=f"L = {fit['a']:.3g} N^-{fit['b']:.3f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("non-embedding parameters")
        ax.set_ylabel("final validation loss")
        ax.legend()
        save_figure(fig, "scaling", out_dir)
        made.append("scaling")
    if result["correlations"]:
        c = result["correlations"]
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        img = ax.imshow(np.array(c["matrix"]), vmin=-1, vmax=1, cmap="RdBu_r")
        labels = [n.replace("labkit_", "") for n in c["names"]]
        ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.grid(False)
        fig.colorbar(img, label="Pearson r")
        save_figure(fig, "correlations", out_dir)
        made.append("correlations")
    records = out_dir / ".records"
    if records.exists():
        for f in records.glob("*.json"):
            f.unlink()
        records.rmdir()
    return made


def write_report(records: Sequence[dict], out: str | Path = "research_report.md") -> Path:
    """research_report.md and its plots (in `<stem>_files/`)."""
    out = Path(out)
    result = analyse(records)
    plots_dir = out.parent / f"{out.stem}_files"
    plots = _plots(result, plots_dir)
    lines = [
        "# Research report",
        "",
        "Generated by `labkit report` from the experiment registry.",
        "",
    ]
    lines += [
        "## Experiments",
        "",
        "| experiment | configuration | seed | params (non-emb.) | tokens | best val loss |",
        "|---|---|---|---|---|---|",
    ]
    for exp, r in result["experiments"].items():
        lines.append(
            f"| {exp} | {configuration(r)} | {r['config']['seed']} | {_params(r):,} | "
            f"{r['final']['tokens']:,} | {_fmt(r['final'].get('best_val_mean'))} |"
        )
    base = result["baselines"]
    if base:
        lines += [
            "",
            f"## Baselines ({base.get('preset', '')})",
            "",
            "| task | random | " + " | ".join(base["kinds"]) + " |",
            "|---|---|" + "---|" * len(base["kinds"]),
        ]
        for t in sorted(base["random"]):
            cells = [
                f"{np.mean(base['scores'][k][t]):.3f} ± {np.ptp(base['scores'][k][t]) / 2:.3f}"
                if t in base["scores"].get(k, {})
                else "-"
                for k in base["kinds"]
            ]
            lines.append(f"| {t} | {base['random'][t]:.3f} | " + " | ".join(cells) + " |")
        checks = base.get("checks", {})
        lines += [
            "",
            f"Consistent across seeds (spread < 2 points): {checks.get('consistent')}; "
            f"monotonic (trained > untrained > random) on "
            f"{100 * checks.get('monotonic_share', 0):.0f} % of tasks.",
        ]
    if result["tasks"]:
        lines += [
            "",
            "## Scores per task (mean over seeds, 95 % CI)",
            "",
            "| configuration | "
            + " | ".join(t.replace("labkit_", "") for t in result["tasks"])
            + " | mean | per M params | per PFLOP |",
            "|---|" + "---|" * (len(result["tasks"]) + 3),
        ]
        for name, c in result["configurations"].items():
            if not c["tasks"]:
                continue
            cells = []
            for t in result["tasks"]:
                s = c["tasks"].get(t)
                if not s:
                    cells.append("-")
                elif s["n"] == 1:
                    cells.append(f"{s['mean']:.3f} (1 seed)")
                else:
                    cells.append(f"{s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]")
            lines.append(
                f"| {name} | " + " | ".join(cells) + f" | {_fmt(c['mean_score'])} | "
                f"{_fmt(c['score_per_million_params'])} | {_fmt(c['score_per_pflop'])} |"
            )
    if result["ttests"]:
        lines += [
            "",
            "## Paired t-tests",
            "",
            "| a | b | paired over | n | mean diff (a - b) | t | p |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in result["ttests"]:
            lines.append(
                f"| {t['a']} | {t['b']} | {t['paired_over']} | {t['n']} | "
                f"{t['mean_difference']:+.4f} | {_fmt(t['t'], 2)} | {_fmt(t['p'], 4)} |"
            )
    if not result["scaling"]:
        lines += [
            "",
            "## Scaling",
            "",
            "No fit: the registry needs models of at least two sizes "
            f"{SPAN}x apart (e.g. `labkit sweep pretrain/configs/sweeps/architecture.toml`).",
        ]
    else:
        fit = result["scaling"]["loss"]
        lines += [
            "",
            "## Scaling",
            "",
            f"Loss against non-embedding parameters N: L = {fit['a']:.4g} "
            f"N^(-{fit['b']:.4f}) (R² in log space {fit['r2']:.3f}, "
            f"{len(result['scaling']['points'])} configurations).",
        ]
        if "error_rate" in result["scaling"]:
            e = result["scaling"]["error_rate"]
            lines.append(
                f"Error rate (1 - mean score): {e['a']:.4g} N^(-{e['b']:.4f}) (R² {e['r2']:.3f})."
            )
    if result["correlations"]:
        c = result["correlations"]
        lines += [
            "",
            f"## Correlations (Pearson, over {c['n']} evaluated milestones)",
            "",
            "| | " + " | ".join(n.replace("labkit_", "") for n in c["names"]) + " |",
            "|---|" + "---|" * len(c["names"]),
        ]
        for n, row in zip(c["names"], c["matrix"], strict=True):
            lines.append(
                f"| {n.replace('labkit_', '')} | " + " | ".join(_fmt(v, 2) for v in row) + " |"
            )
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({plots_dir.name}/{p}.png)" for p in plots]
    out.write_text("\n".join(lines) + "\n")
    (out.parent / f"{out.stem}.json").write_text(
        json.dumps({k: v for k, v in result.items() if k != "experiments"}, indent=2, default=float)
        + "\n"
    )
    return out
