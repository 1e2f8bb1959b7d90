"""`make paper`: train the miniature study's missing runs, then regenerate every figure.

    python pretrain/paper.py [--scale cpu|gpu|1.3b] [--runs mla-dense ...] [--no-figures]

The study is pretrain/configs/paper-mini/study.toml: four runs, {MLA, GQA} x {dense, control}.
A run whose directory holds `final.json` is finished and skipped; an unfinished one resumes from
its latest resume state; a missing one starts. Then `labkit figures --runs <runs_dir>` rebuilds
figures/.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from labkit.runs import FINAL, RESUME, trainer_command  # noqa: E402

STUDY = REPO / "pretrain" / "configs" / "paper-mini" / "study.toml"


def load_study(path: Path, scale: str) -> tuple[dict, dict[str, dict]]:
    study = tomllib.loads(path.read_text())
    scales = study["scales"]
    if scale not in scales:
        raise SystemExit(f"error: --scale {scale!r}: allowed values are {', '.join(scales)}")
    return scales[scale], study["runs"]


def train_command(scale: dict, name: str, run: dict, run_dir: Path) -> list[str]:
    preset = scale["preset"].format(attention=run["attention"])
    sets = [
        f"model.preset={preset}",
        f"data.mix={run['mix']}",
        f"name={run_dir.parent.name}-{name}",
    ]
    sets += scale.get("set", [])  # a scale's own overrides, e.g. "data.dir=/scratch/demo"
    nproc = int(scale.get("nproc", 1))
    launcher = (shutil.which("torchrun") or "torchrun",)
    return trainer_command(REPO / scale["config"], run_dir, sets, nproc=nproc, launcher=launcher)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scale", default="cpu", help="cpu (default), gpu or 1.3b: see study.toml")
    p.add_argument("--runs", nargs="*", help="only these runs (default: all four)")
    p.add_argument("--no-figures", action="store_true", help="train only")
    p.add_argument("--out", default=str(REPO / "figures"), help="figure directory")
    p.add_argument("--study", default=str(STUDY), help="the study file (default: paper-mini's)")
    args = p.parse_args(argv)

    scale, runs = load_study(Path(args.study), args.scale)
    chosen = args.runs or list(runs)
    unknown = sorted(set(chosen) - set(runs))
    if unknown:
        print(f"error: unknown run(s) {unknown}; the study has {', '.join(runs)}", file=sys.stderr)
        return 2
    runs_dir = REPO / scale["runs_dir"]
    timings = {}
    for name in chosen:
        run_dir = runs_dir / name
        if (run_dir / FINAL).exists():
            print(f"[paper] {name}: finished ({run_dir})")
            continue
        state = "resuming" if (run_dir / RESUME).exists() else "training"
        print(f"[paper] {name}: {state} in {run_dir}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call(train_command(scale, name, runs[name], run_dir), cwd=REPO)
        if rc != 0:
            print(f"[paper] {name}: the trainer exited with {rc}; rerun to resume", file=sys.stderr)
            return rc
        timings[name] = time.perf_counter() - start
    if timings:
        each = ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items())
        print(f"[paper] trained in {sum(timings.values()) / 60:.1f} min ({each})")
    if args.no_figures:
        return 0
    cmd = [sys.executable, "-m", "labkit.cli", "figures", "--runs", str(runs_dir)]
    return subprocess.call([*cmd, "--out", args.out], cwd=REPO)


if __name__ == "__main__":
    sys.exit(main())
