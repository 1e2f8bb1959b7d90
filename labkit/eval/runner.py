"""Evaluate milestones with lm-eval through the `labkit` adapter, and keep the results: one JSON per
milestone in the run (`evals/<milestone>.json`) and one line per milestone in the registry
(`index.jsonl` next to the run, the file the trainer appends its final record to)."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from labkit.errors import DataError
from labkit.eval.metrics import f1
from labkit.eval.tasks import (
    SUITE,
    SUITE_VERSION,
    TASKS,
    build_tasks,
    check_tasks_are_data,
    harden_lm_eval,
)
from labkit.run import Milestone, select_milestones
from labkit.run.layout import EVALS, INDEX

# The number each task is ranked by (lm-eval reports several).
MAIN_METRIC = {
    "labkit_lambada": "acc",
    "labkit_arithmetic": "exact_match",
    "labkit_squad": "f1",
}
DEFAULT_METRIC = "acc"


def main_metric(task: str) -> str:
    return MAIN_METRIC.get(task, DEFAULT_METRIC)


def tasks_dir_for(
    checkpoint: Milestone | Path, rebuild: bool = False, tasks: Sequence[str] = (SUITE,)
) -> Path:
    """The suite of the data set a checkpoint trained on (DATA/tasks), built on first use: only
    the suite tasks named in `tasks` (all of them for the `labkit_suite` group); a later request
    for others adds them."""
    data_dir = Milestone.read(checkpoint).data_path
    if not (data_dir / "manifest.json").exists():
        raise FileNotFoundError(
            f"the data set {data_dir} that {checkpoint} trained on is gone: the offline suite is "
            "built from it (rebuild it with `labkit data build`)"
        )
    out = data_dir / "tasks"
    group = out / f"{SUITE}.yaml"
    if not rebuild and group.exists():
        try:
            check_tasks_are_data(out)
        except DataError as err:
            if not (out / "suite.json").exists():
                raise
            # a suite an older labkit wrote (with a `!function` hook): regenerate it as data
            print(f"warning: {err}; rebuilding it")
            rebuild = True
    whole = SUITE in tasks
    wanted = [t for t in TASKS if t in tasks]  # other names are lm-eval's own tasks
    if not rebuild and group.exists():
        built = json.loads((out / "suite.json").read_text())
        metadata = yaml.safe_load(group.read_text()).get("metadata") or {}
        if metadata.get("version", 1) < SUITE_VERSION:  # it names metrics lm-eval lacks
            print(f"note: {out} was built by an older labkit; rebuilding it")
            rebuild = True
        elif (not whole or not metadata.get("partial")) and all(t in built for t in wanted):
            return out
        wanted = sorted(set(wanted) | set(built), key=list(TASKS).index)
    if whole or wanted:
        build_tasks(data_dir, out, names=None if whole else wanted, overwrite=False)
    return out


def flatten(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """lm-eval's {"task": {"acc,none": x, "acc_stderr,none": s, ...}} as
    {"task": {"acc": x, "acc_stderr": s, ...}} (filter names dropped; groups without numbers
    left out)."""
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results.items():
        row = {}
        for key, value in metrics.items():
            if "," in key and isinstance(value, int | float) and not isinstance(value, bool):
                row[key.split(",")[0]] = float(value)
        if row:
            out[task] = row
    return out


def load_tasks(tasks: Sequence[str], tasks_dir: str | Path) -> dict:
    """lm-eval's loaded tasks (zero-shot), to evaluate several checkpoints without reloading
    the data sets each time."""
    from lm_eval.tasks import TaskManager

    for name in ("lm-eval", "lm_eval"):  # its per-task INFO lines drown the progress bar
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    check_tasks_are_data(tasks_dir)  # never let lm-eval import code from a data set
    harden_lm_eval()
    loaded = TaskManager(include_path=str(tasks_dir)).load(list(tasks))
    for task in loaded["tasks"].values():
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=0)
    return loaded


def evaluate_checkpoint(
    checkpoint: str | Path | Milestone,
    tasks: Sequence[str] = (SUITE,),
    tasks_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    dtype: str = "float32",
    loaded: dict | None = None,
) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of one checkpoint on lm-eval tasks (the offline suite by default;
    Hub tasks by name where a network exists). `loaded` reuses `load_tasks`'s result."""
    import random

    import numpy as np
    import torch
    from lm_eval.evaluator import evaluate

    from labkit.eval.adapter import LabkitLM

    checkpoint = Milestone.read(checkpoint)
    if loaded is None:
        loaded = load_tasks(tasks, tasks_dir or tasks_dir_for(checkpoint, tasks=tasks))
    lm = LabkitLM(checkpoint=str(checkpoint.path), batch_size=batch_size, device=device,
                  dtype=dtype)  # fmt: skip
    random.seed(0)  # the bootstrap of standard errors draws from these
    np.random.seed(0)
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # lm-eval prints a line per bootstrap
        result = evaluate(
            lm=lm,
            task_dict=loaded,
            limit=limit,
            bootstrap_iters=1000,
            log_samples="labkit_squad" in loaded["tasks"],  # for SQuAD's F1
            verbosity="WARNING",
        )
    scores = flatten(result["results"])
    if "labkit_squad" in scores:
        scores["labkit_squad"] |= squad_f1(result["samples"]["labkit_squad"])
    return scores


def squad_f1(samples: list[dict[str, Any]]) -> dict[str, float]:
    """SQuAD's token F1 over lm-eval's logged samples of labkit_squad (the generated answer
    against the target), with the standard error lm-eval gives a mean: code a task directory
    never carries, so labkit computes it beside lm-eval's exact_match."""
    import numpy as np

    scores = np.array([f1(s["filtered_resps"][0], s["target"]) for s in samples])
    stderr = float(scores.std(ddof=1) / np.sqrt(len(scores))) if len(scores) > 1 else 0.0
    return {"f1": float(scores.mean()), "f1_stderr": stderr}


def evaluate_run(
    run_dir: str | Path,
    tasks: Sequence[str] = (SUITE,),
    milestones: str | Sequence[str] = "all",
    limit: int | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    registry: str | Path | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate milestones of a run; write evals/<milestone>.json into the run and append one
    record per milestone to the registry (default: index.jsonl beside the run)."""
    run_dir = Path(run_dir)
    chosen = select_milestones(run_dir, milestones)
    loaded = load_tasks(tasks, tasks_dir_for(chosen[0], tasks=tasks))
    registry = Path(registry) if registry else run_dir.parent / INDEX
    (run_dir / EVALS).mkdir(exist_ok=True)
    records = []
    for m in tqdm(chosen, desc=f"eval {run_dir.name}", disable=not progress):
        scores = evaluate_checkpoint(m, tasks, None, limit, batch_size, device, loaded=loaded)
        record = {
            "kind": "eval",
            "experiment_id": run_dir.name,
            "run_dir": str(run_dir.resolve()),
            "milestone": m.name,
            "step": m.step,
            "tokens": m.tokens,
            "model_sha256": m.model_sha256,
            "val_loss": m.val_mean if m.val else None,
            "tasks": list(tasks),
            "limit": limit,
            "timestamp": dt.datetime.now().isoformat(timespec="seconds"),
            "scores": scores,
        }
        (run_dir / EVALS / f"{m.name}.json").write_text(json.dumps(record, indent=2) + "\n")
        with registry.open("a") as f:
            f.write(json.dumps(record) + "\n")
        records.append(record)
    return records


def milestone_scores(
    run_dir: str | Path,
    milestones: Sequence[Milestone],
    limit: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """The suite's results for these milestones of a run: read from the run's evals/ when an
    earlier evaluation used the same `limit`, evaluated (and recorded) otherwise."""
    run_dir = Path(run_dir)
    out, missing = [], []
    for path in milestones:
        saved = run_dir / EVALS / f"{path.name}.json"
        record = json.loads(saved.read_text()) if saved.exists() else None
        if record is None or record.get("limit") != limit or SUITE not in record["tasks"]:
            missing.append(path.name)
        out.append(record)
    if missing:
        fresh = {
            r["milestone"]: r
            for r in evaluate_run(run_dir, (SUITE,), missing, limit, progress=progress)
        }
        out = [
            r if r and r["milestone"] not in fresh else fresh[p.name]
            for r, p in zip(out, milestones, strict=True)
        ]
    return out
