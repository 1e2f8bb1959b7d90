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

REPO = Path(__file__).resolve().parents[1]


def load_sweep(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        shipped = sorted(p.name for p in (REPO / "pretrain/configs/sweeps").glob("*.toml"))
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


def plan(sweep: dict[str, Any], runs_root: Path = REPO / "runs") -> list[dict[str, Any]]:
    """One entry per grid point: its run directory and trainer arguments."""
    keys = list(sweep["grid"])
    out = []
    for values in itertools.product(*(sweep["grid"][k] for k in keys)):
        assignment = dict(zip(keys, values, strict=True))
        run_dir = runs_root / f"{sweep['name']}-{_slug(assignment)}"
        sets = [*sweep.get("set", []), *(f"{k}={_toml_value(v)}" for k, v in assignment.items())]
        sets.append(f"name={run_dir.name}")
        args = ["--config", str(REPO / sweep["config"]), "--run-dir", str(run_dir), "--resume"]
        for s in sets:
            args += ["--set", s]
        out.append({"run_dir": run_dir, "assignment": assignment, "args": args})
    return out


def run_sweep(
    path: str | Path, print_only: bool = False, nproc: int = 1, runs_root: Path = REPO / "runs"
) -> list[dict[str, Any]]:
    """Train every run of the sweep in turn, or print one torchrun command per run."""
    from labkit.config import TrainConfig

    entries = plan(load_sweep(path), runs_root)
    for e in entries:  # every combination must be a valid config before anything trains
        sets = [e["args"][i + 1] for i, a in enumerate(e["args"]) if a == "--set"]
        TrainConfig.load(e["args"][1], sets)
    trainer = str(REPO / "pretrain" / "run.py")
    for e in entries:
        if print_only:
            print(shlex.join(["torchrun", f"--nproc_per_node={nproc}", trainer, *e["args"]]))
            continue
        if (e["run_dir"] / "final.json").exists():
            print(f"[sweep] {e['run_dir'].name}: finished")
            continue
        print(f"[sweep] {e['run_dir'].name}: training", flush=True)
        if nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={nproc}", trainer, *e["args"]]  # fmt: skip
        else:
            cmd = [sys.executable, trainer, *e["args"]]
        rc = subprocess.call(cmd, cwd=REPO)
        if rc != 0:
            raise RuntimeError(f"{e['run_dir'].name} failed (exit {rc}); rerun the sweep to resume")
    return entries
