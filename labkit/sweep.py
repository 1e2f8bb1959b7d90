"""`labkit sweep FILE`: a grid of training runs (seed 002's architecture, learning-rate and
sequence-length sweeps ship in pretrain/configs/sweeps/).

A sweep file names a base trainer config, fixed overrides (`set`) and a `[grid]` of
`section.key = [values]`; every combination is one run, `runs/<name>-<key=value...>`. Here the
runs train one after another (finished ones are skipped, unfinished ones resume); `--print` writes
one `torchrun` command per run instead, for a cluster scheduler. Each finished run appends its
record to runs/index.jsonl, the registry `labkit report` reads.
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from labkit.resources import configs_dir, find
from labkit.run import trainer_command
from labkit.run.layout import FINAL

# The interpreter's own torchrun, so a sweep runs without activating the environment.
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone")


def load_sweep(path: str | Path) -> dict[str, Any]:
    path = find(path)
    if not path.exists():
        shipped = sorted(p.name for p in (configs_dir() / "sweeps").glob("*.toml"))
        raise FileNotFoundError(f"{path} not found; shipped sweeps: {shipped}")
    sweep = tomllib.loads(path.read_text())
    for key in ("name", "config", "grid"):
        if key not in sweep:
            raise ValueError(f"{path}: missing key {key!r} (a sweep has name, config, set, grid)")
    unknown = set(sweep) - {"name", "config", "set", "grid"}
    if unknown:
        raise ValueError(
            f"{path}: unknown keys {sorted(unknown)}; allowed: name, config, set, grid"
        )
    for key, values in sweep["grid"].items():
        if "." not in key or not isinstance(values, list) or not values:
            raise ValueError(f"{path}: grid.{key} must be 'section.key' = [one or more values]")
    return sweep


def _slug(assignment: dict[str, Any]) -> str:
    text = "-".join(f"{k.split('.')[-1]}={v}" for k, v in assignment.items())
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", text)


def _toml_value(v: Any) -> str:
    return f'"{v}"' if isinstance(v, str) else repr(v)


def plan(sweep: dict[str, Any], runs_root: Path = Path("runs")) -> list[dict[str, Any]]:
    """One entry per grid point: its run directory, config and `--set` overrides."""
    keys = list(sweep["grid"])
    out = []
    for values in itertools.product(*(sweep["grid"][k] for k in keys)):
        assignment = dict(zip(keys, values, strict=True))
        run_dir = runs_root / f"{sweep['name']}-{_slug(assignment)}"
        sets = [*sweep.get("set", []), *(f"{k}={_toml_value(v)}" for k, v in assignment.items())]
        sets.append(f"name={run_dir.name}")
        config = find(sweep["config"])
        out.append({"run_dir": run_dir, "assignment": assignment, "config": config, "sets": sets})
    return out


def run_sweep(
    path: str | Path, print_only: bool = False, nproc: int = 1, runs_root: Path = Path("runs")
) -> list[dict[str, Any]]:
    """Train every run of the sweep in turn, or print one torchrun command per run."""
    from labkit.config import TrainConfig

    entries = plan(load_sweep(path), runs_root)
    for e in entries:  # every combination must be a valid config before anything trains
        TrainConfig.load(e["config"], e["sets"])
    for e in entries:
        if print_only:
            cmd = trainer_command(e["config"], e["run_dir"], e["sets"], nproc=nproc)
            if nproc == 1:  # a scheduler's line: torchrun even for one process
                cmd = ["torchrun", "--nproc_per_node=1", *cmd[1:]]
            print(shlex.join(cmd))
            continue
        if (e["run_dir"] / FINAL).exists():
            print(f"[sweep] {e['run_dir'].name}: finished")
            continue
        print(f"[sweep] {e['run_dir'].name}: training", flush=True)
        cmd = trainer_command(e["config"], e["run_dir"], e["sets"], nproc=nproc, launcher=TORCHRUN)
        rc = subprocess.call(cmd)
        if rc != 0:
            raise RuntimeError(f"{e['run_dir'].name} failed (exit {rc}); rerun the sweep to resume")
    return entries
