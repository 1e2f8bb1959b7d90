"""Shared benchmark plumbing: machine description, interleaved timing, recording results."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from labkit.parallel import keep_freed_memory_on_cpu
from labkit.resources import checkout, configs_dir
from labkit.run import trainer_command
from labkit.run.layout import METRICS

# Every candidate of a benchmark process runs under the allocator setting the trainer uses, so a
# peer measured here is not slowed by page faults that labkit's own runs avoid.
keep_freed_memory_on_cpu()

# Benchmarks record into a checkout's benchmarks/RESULTS.md (from a wheel: under the cwd).
ROOT = checkout() or Path.cwd()
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def run_trainer(run_dir: Path, sets: list[str], env: dict[str, str] | None = None) -> list[dict]:
    """Run pretrain/run.py (demo.toml + `--set` overrides) as a subprocess — library code never
    imports pretrain/ — and return its metrics.jsonl records."""
    cmd = trainer_command(configs_dir() / "demo.toml", run_dir, sets, resume=False)
    subprocess.run(
        cmd,
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, **(env or {})),
    )
    return [json.loads(x) for x in (run_dir / METRICS).read_text().splitlines()]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {device}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def interleaved_timing(
    candidates: dict[str, Callable[[], None]],
    rounds: int,
    steps: int,
    warmup: int = 2,
    stat: str = "min",
) -> dict[str, float]:
    """Seconds per call of each candidate: the minimum (default; interference only ever adds time,
    as `timeit` argues) or the median over rounds. Candidates alternate round by round so that slow
    drifts of a noisy machine (thermal, neighbours) hit all of them alike."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for r in range(rounds):
        order = list(candidates) if r % 2 == 0 else list(reversed(candidates))
        for name in order:
            fn = candidates[name]
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            samples[name].append((time.perf_counter() - t0) / steps)
    reduce = {"min": min, "median": statistics.median}[stat]
    return {name: reduce(s) for name, s in samples.items()}


def command_line(module: str, argv: list[str] | None) -> str:
    """`python -m MODULE ARGS` as a benchmark ran: `argv` when a caller passed it, else this
    process's own arguments (what `main()` parsed), so a record names its real settings."""
    args = sys.argv[1:] if argv is None else argv
    return f"`{shlex.join(['python', '-m', module, *args])}`"


def record(title: str, body: str, path: Path = RESULTS) -> None:
    """Append a dated section to benchmarks/RESULTS.md."""
    stamp = dt.date.today().isoformat()
    section = f"\n## {title} — {stamp}\n\nMachine: {machine()}\n\n{body.rstrip()}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text("# Benchmark results\n\nMeasured figures, newest last.\n")
    with path.open("a") as f:
        f.write(section)
