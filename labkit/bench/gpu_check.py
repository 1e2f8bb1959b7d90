"""One command for a session that is lent a GPU: `make gpu-check` (or this module).

    python3 -m labkit.bench.gpu_check [--dry-run] [--wheels DIR] [--budget-s 600]

Runs, within a wall-clock budget (10 minutes by default), and records in benchmarks/RESULTS.md:
1. `python -m labkit.kernels.check`: every kernel test case in bf16 and fp16 against float64 (it
   needs only torch and triton), then the `gpu` tests (the same cases under pytest);
2. `python -m labkit.bench.attention --record --quick`: kernel TFLOP/s against every SDPA backend,
   MLA decode against the expanded cache and the memory floor, and `pretrain/run.py` tokens/s
   and MFU for the small presets with the kernel and with SDPA;
3. `pretrain/run.py` tokens/s and MFU on a 1.3B layer slice (mla-1.3b / gqa-1.3b with two of their
   26 layers, seq 2048), kernel vs SDPA.

Installation, for a machine that has PyTorch (with CUDA) and Triton preinstalled in versions other
than labkit's pins, possibly without network: outside a virtual environment it creates `.venv-gpu`
with `--system-site-packages` (so the machine's torch and triton are the ones used) and re-runs
itself there. It then installs only the dependencies of pyproject.toml that are missing, with a
constraints file pinning every installed torch, triton and nvidia-* distribution to its installed
version: pip can never replace them, so no CUDA wheel is downloaded (it fails instead). labkit
itself is not installed; the steps run from the checkout (PYTHONPATH). Offline, point `--wheels`
(or `make gpu-check WHEELS=dir`) at a directory of wheels for the missing packages; if they
still cannot be installed, the steps that need only torch and triton run (kernel correctness,
kernel and MLA-decode speed) and the others are recorded as not run, naming what is missing.
`--dry-run` prints all of this, and the commands, without running anything.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labkit.resources import checkout, configs_dir

ROOT = checkout() or Path.cwd()  # `make gpu-check` runs in a checkout
VENV = ROOT / ".venv-gpu"
NEVER_INSTALL = re.compile(r"^(torch|triton|nvidia-.*|pytorch-triton.*)$")


def _dist_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]


def requirements() -> list[str]:
    """pyproject.toml's runtime and dev requirements (markers that do not apply dropped)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])
    out = []
    for req in reqs:
        req, _, marker = req.partition(";")
        if marker and "python_version < '3.11'" in marker and sys.version_info >= (3, 11):
            continue
        if _dist_name(req) == "ruff":  # lint only; no GPU step needs it
            continue
        out.append(req.strip())
    return out


def missing(reqs: list[str]) -> list[str]:
    """Requirements whose distribution is not installed at all (versions are not second-guessed:
    an installed package of another version is left as it is)."""
    out = []
    for req in reqs:
        try:
            md.version(_dist_name(req))
        except md.PackageNotFoundError:
            out.append(req)
    return out


def constraints() -> list[str]:
    """`name==version` for every installed torch, triton and nvidia-* distribution."""
    pins = set()
    for dist in md.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if NEVER_INSTALL.match(name):
            pins.add(f"{name}=={dist.version}")
    return sorted(pins)


def install_command(todo: list[str], wheels: str | None, constraints_file: str) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "install", "-c", constraints_file]
    if wheels:
        cmd += ["--no-index", "--find-links", wheels]
    return cmd + todo


def steps(py: str = sys.executable) -> list[tuple[str, list[str], float, bool]]:
    """(title, command, share of the budget, needs every dependency) of each check, in order."""
    return [
        ("kernel correctness", [py, "-m", "labkit.kernels.check"], 0.1, False),
        ("gpu tests", [py, "-m", "pytest", "-q", "-m", "gpu", "tests/test_kernels.py"], 0.15, True),
        (
            "attention benchmark",
            [py, "-m", "labkit.bench.attention", "--record", "--quick"],
            0.5,
            False,
        ),
        ("1.3B layer slice", [py, "-m", "labkit.bench.gpu_check", "--layer-slice"], 0.25, True),
    ]


def layer_slice(steps_per_run: int = 10) -> list[str]:
    """tokens/s and MFU of pretrain/run.py on two layers of each 1.3B preset, kernel vs SDPA."""
    from labkit.bench.common import run_trainer
    from labkit.config import DataConfig
    from labkit.data.build import build

    rows = [
        "| preset (2 of 26 layers) | attention | tokens/s | MFU |",
        "|---|---|---|---|",
    ]
    micro, seq = 4, 2048
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        build(DataConfig.load(configs_dir() / "data" / "ci.toml"), data, quiet=True)
        for preset in ("mla-1.3b", "gqa-1.3b"):
            for impl in ("triton", "sdpa"):
                sets = [
                    f"model.preset='{preset}'",
                    "model.n_layers=2",
                    f"data.dir='{data}'",
                    f"train.seq_len={seq}",
                    f"train.micro_batch={micro}",
                    f"train.batch_tokens={micro * seq}",
                    f"train.tokens={steps_per_run * micro * seq}",
                    "log.every_steps=5",
                    f"eval.every_steps={steps_per_run}",
                    "eval.tokens_per_split=4096",
                    f"checkpoint.resume_every_steps={steps_per_run}",
                    "checkpoint.log_spaced_until_step=0",
                    f"checkpoint.every_tokens={10**15}",
                    "log.tensorboard=false",
                ]
                sets.append(f"model.attn_impl='{impl}'")
                records = run_trainer(Path(tmp) / f"{preset}-{impl}", sets)
                last = [r for r in records if "mfu" in r][-1]
                rows.append(
                    f"| {preset} | {impl} | {last['tokens_per_s']:,.0f} | "
                    f"{100 * (last['mfu'] or 0):.1f} % |"
                )
                print(rows[-1], flush=True)
    return rows


def run_steps(budget_s: float, missing_deps: list[str]) -> list[str]:
    """Run every step within the budget (those that need every dependency only when none is
    missing); returns a markdown summary."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    env.pop("TRITON_INTERPRET", None)
    start = time.monotonic()
    lines = ["| step | result | seconds |", "|---|---|---|"]
    plan = steps()
    for i, (title, cmd, _, needs_all) in enumerate(plan):
        if needs_all and missing_deps:
            lines.append(f"| {title} | not run: missing {', '.join(missing_deps)} | 0 |")
            continue
        # a step may use what earlier ones left, never the shares of the steps after it
        later = sum(share for _, _, share, _ in plan[i + 1 :]) * budget_s
        limit = budget_s - (time.monotonic() - start) - later
        if limit <= 0:
            lines.append(f"| {title} | not run: budget spent | 0 |")
            continue
        print(f"== {title}: {shlex.join(cmd)} (limit {limit:.0f} s)", flush=True)
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=limit, capture_output=True, text=True)  # fmt: skip
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
            result = f"exit {proc.returncode}: {tail[0][:160]}"
            print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", flush=True)
        except subprocess.TimeoutExpired:
            result = f"stopped after {limit:.0f} s (budget)"
        lines.append(f"| {title} | {result.replace('|', '/')} | {time.monotonic() - t0:.0f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--wheels", help="offline: a directory of wheels for missing packages")
    parser.add_argument("--budget-s", type=float, default=600.0, help="wall-clock budget")
    parser.add_argument("--layer-slice", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.layer_slice:
        from labkit.bench.common import record

        rows = layer_slice()
        record("labkit.bench.gpu_check (1.3B layer slice)", "\n".join(rows))
        return 0

    in_venv = sys.prefix != sys.base_prefix
    plan = []
    if not in_venv:
        venv_py = VENV / "bin" / "python"
        plan.append(f"create {VENV} with --system-site-packages (uses this machine's torch/triton)")
        plan.append(
            f"re-run: {venv_py} -m labkit.bench.gpu_check {shlex.join(argv or sys.argv[1:])}"
        )
    todo = missing(requirements())
    pins = constraints()
    plan.append("constraints (installed, never replaced): " + (", ".join(pins) or "none found"))
    if todo:
        cmd = install_command(todo, args.wheels, "<constraints file>")
        plan.append("install the missing dependencies: " + shlex.join(cmd))
    else:
        plan.append("install nothing: every dependency of pyproject.toml is present")
    try:
        import torch

        cuda = torch.cuda.is_available()
        device = torch.cuda.get_device_name() if cuda else "no CUDA device"
        plan.append(f"torch {torch.__version__} ({device})")
    except ModuleNotFoundError:
        cuda = False
        plan.append("torch is not installed: install PyTorch with CUDA first (this never does)")
    py = sys.executable if in_venv else str(VENV / "bin" / "python")
    for title, cmd, share, _ in steps(py):
        seconds = share * args.budget_s
        plan.append(f"run {title} ({seconds:.0f} s + what earlier steps left): {shlex.join(cmd)}")
    plan.append("record the step summary in benchmarks/RESULTS.md")
    print("gpu-check plan:\n" + "\n".join(f"  {i + 1}. {line}" for i, line in enumerate(plan)))
    if args.dry_run:
        return 0
    if not in_venv:
        if not (VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(VENV)], check=True)  # fmt: skip
        return subprocess.call(
            [str(VENV / "bin" / "python"), "-m", "labkit.bench.gpu_check", *(argv or sys.argv[1:])],
            cwd=ROOT,
        )
    if not cuda:
        print("gpu-check: error: no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)  # fmt: skip
        return 2
    if todo:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("\n".join(pins) + "\n")
        subprocess.call(install_command(todo, args.wheels, f.name))
    still = [_dist_name(r) for r in missing(requirements())]
    if still:
        print(
            "gpu-check: could not install " + ", ".join(still) + " (offline? WHEELS=dir of their "
            "wheels): running only what needs torch and triton alone (kernel correctness, kernel "
            "and decode speed)",
            file=sys.stderr,
        )
    from labkit.bench.common import record

    lines = run_steps(args.budget_s, still)
    record("labkit.bench.gpu_check", "`make gpu-check`\n\n" + "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
