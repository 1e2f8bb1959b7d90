"""Seed 002's three baselines for a preset: random (analytic, from the task suite), untrained (a
short run, 100 steps by default) and small-trained (1,000 steps), each over several seeds, with
its consistency and monotonicity checks. The runs are trained by `pretrain/run.py` (run as a
program, never imported) and evaluated on the offline suite."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labkit.eval.runner import evaluate_checkpoint, load_tasks, main_metric, tasks_dir_for
from labkit.eval.stats import baseline_checks
from labkit.eval.tasks import SUITE, random_baselines
from labkit.resources import configs_dir
from labkit.run import Milestone, list_milestones, trainer_command
from labkit.run.layout import FINAL, INDEX

DEMO_CONFIG = configs_dir() / "demo.toml"


def train_short_run(
    run_dir: Path, config: Path, preset: str, seed: int, steps: int, overrides: Sequence[str] = ()
) -> Milestone:
    """Train (or resume, or reuse when finished) `steps` optimizer steps; the last milestone."""
    if not (run_dir / FINAL).exists():
        from labkit.config import TrainConfig

        batch = TrainConfig.load(config, list(overrides)).train.batch_tokens
        sets = [f"model.preset={preset}", f"seed={seed}", f"train.tokens={steps * batch}",
                f"name={run_dir.name}", "checkpoint.log_spaced_until_step=0",
                f"eval.every_steps={steps}", *overrides]  # fmt: skip
        rc = subprocess.call(trainer_command(config, run_dir, sets))
        if rc != 0:
            raise RuntimeError(f"training {run_dir} failed (exit {rc}); rerun to resume")
    return list_milestones(run_dir)[-1]


def establish_baselines(
    preset: str,
    config: str | Path = DEMO_CONFIG,
    seeds: Sequence[int] = (0, 1, 2),
    untrained_steps: int = 100,
    trained_steps: int = 1000,
    out_dir: str | Path = Path("runs") / "baselines",
    limit: int | None = None,
    overrides: Sequence[str] = (),
    registry: str | Path | None = None,
) -> dict[str, Any]:
    """Train, evaluate and check the baselines; write `<out_dir>/<preset>.json` and a registry
    record (`kind: "baseline"`)."""
    out_dir = Path(out_dir)
    scores: dict[str, dict[str, list[float]]] = {"trained": {}, "untrained": {}}
    tasks_dir, loaded = None, None
    for kind, steps in (("untrained", untrained_steps), ("trained", trained_steps)):
        for seed in seeds:
            run_dir = out_dir / f"{preset}-{kind}-seed{seed}"
            milestone = train_short_run(run_dir, Path(config), preset, seed, steps, overrides)
            if loaded is None:
                tasks_dir = tasks_dir_for(milestone)
                loaded = load_tasks((SUITE,), tasks_dir)
            result = evaluate_checkpoint(milestone, (SUITE,), tasks_dir, limit, loaded=loaded)
            for task, metrics in result.items():
                if main_metric(task) in metrics:
                    scores[kind].setdefault(task, []).append(metrics[main_metric(task)])
    random = random_baselines(tasks_dir)
    record = {
        "kind": "baseline",
        "preset": preset,
        "seeds": list(seeds),
        "steps": {"untrained": untrained_steps, "trained": trained_steps},
        "kinds": ["trained", "untrained"],
        "random": random,
        "scores": scores,
        "checks": baseline_checks(scores, random),
        "limit": limit,
        "timestamp": dt.datetime.now().isoformat(timespec="seconds"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{preset}.json").write_text(json.dumps(record, indent=2) + "\n")
    registry = Path(registry) if registry else out_dir.parent / INDEX
    with registry.open("a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def load_baselines(directory: str | Path = Path("runs") / "baselines") -> dict[str, dict]:
    """Stored baseline sets by preset ({} when none were established)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(directory).glob("*.json"))}
