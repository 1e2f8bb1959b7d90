"""`make paper`: train the miniature study's missing runs, then regenerate every figure.

    python pretrain/paper.py [--scale cpu|gpu|1.3b] [--runs mla-dense ...] [--no-figures]

The study is pretrain/configs/paper-mini/study.toml: {MLA, GQA} x {dense, control} with two
seeds each, a third MLA-dense seed, and two KV-cache variants (eleven runs at the cpu scale).
A run whose directory holds `final.json` is finished and skipped; an unfinished one resumes from
its latest resume state; a missing one starts. Then `labkit figures --runs <runs_dir>` rebuilds
figures/.
"""

from __future__ import annotations

import argparse
import os
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

from labkit.run import trainer_command  # noqa: E402
from labkit.run.layout import FINAL, RESUME  # noqa: E402

STUDY = REPO / "pretrain" / "configs" / "paper-mini" / "study.toml"


def load_study(path: Path, scale: str) -> tuple[dict, dict[str, dict]]:
    study = tomllib.loads(path.read_text())
    scales = study["scales"]
    if scale not in scales:
        raise SystemExit(f"error: --scale {scale!r}: allowed values are {', '.join(scales)}")
    return scales[scale], study["runs"]


RUN_KEYS = {"attention", "mix", "seed", "set"}


def check_runs(runs: dict[str, dict]) -> None:
    """Each run names its attention and mix; `seed` and `set` (a list of extra overrides, e.g. a
    model variant) are optional."""
    for name, run in runs.items():
        unknown = sorted(set(run) - RUN_KEYS)
        missing = sorted({"attention", "mix"} - set(run))
        if unknown or missing:
            raise SystemExit(f"error: study run {name!r}: unknown keys {unknown}, missing keys "
                             f"{missing} (allowed: {sorted(RUN_KEYS)})")  # fmt: skip


def train_command(scale: dict, name: str, run: dict, run_dir: Path) -> list[str]:
    preset = scale["preset"].format(attention=run["attention"])
    sets = [
        f"model.preset={preset}",
        f"data.mix={run['mix']}",
        f"name={run_dir.parent.name}-{name}",
    ]
    if "seed" in run:
        sets.append(f"seed={int(run['seed'])}")
    # the run's own overrides (a model variant), then the scale's (e.g. "data.dir=/scratch/demo")
    sets += [*run.get("set", []), *scale.get("set", [])]
    nproc = int(scale.get("nproc", 1))
    launcher = (shutil.which("torchrun") or "torchrun",)
    return trainer_command(REPO / scale["config"], run_dir, sets, nproc=nproc, launcher=launcher)


def ensure_data(scale: dict) -> None:
    """Build the scale's data set first (once), so that parallel runs never race to build it."""
    from labkit.config import DataConfig, TrainConfig
    from labkit.data.build import build

    cfg = TrainConfig.load(REPO / scale["config"], list(scale.get("set", [])))
    data_dir = Path(cfg.data.dir) if Path(cfg.data.dir).is_absolute() else REPO / cfg.data.dir
    if (data_dir / "manifest.json").exists() or not cfg.data.config:
        return  # built, or the trainer will say which command builds it
    data_cfg = Path(cfg.data.config)
    data_cfg = data_cfg if data_cfg.is_absolute() else REPO / data_cfg
    print(f"[paper] building the data set {data_dir} from {data_cfg}", flush=True)
    build(DataConfig.load(data_cfg), data_dir)


def train_all(jobs: list[tuple[str, list[str], Path]], parallel: int) -> tuple[int, dict]:
    """Run the trainer commands, `parallel` at a time (each with cores / parallel threads and its
    output in runs_dir/NAME.log when parallel > 1). Returns the first non-zero exit code (0 if
    none) and the minutes each run took."""
    threads = max(1, (os.cpu_count() or 1) // parallel)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if parallel > 1 else None
    pending, running, timings, failed = list(jobs), {}, {}, 0
    while pending or running:
        while pending and len(running) < parallel and not failed:
            name, cmd, run_dir = pending.pop(0)
            log = None
            if parallel > 1:
                run_dir.parent.mkdir(parents=True, exist_ok=True)
                log = open(run_dir.parent / f"{name}.log", "ab")  # noqa: SIM115 (closed below)
                print(f"[paper] {name}: output in {log.name}", flush=True)
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log)
            running[proc] = (name, time.perf_counter(), log)
        if failed and not running:
            break
        time.sleep(0.5)
        for proc in [p for p in running if p.poll() is not None]:
            name, start, log = running.pop(proc)
            if log:
                log.close()
            if proc.returncode:
                print(f"[paper] {name}: the trainer exited with {proc.returncode}; rerun to "
                      "resume", file=sys.stderr)  # fmt: skip
                failed = failed or proc.returncode
            else:
                timings[name] = (time.perf_counter() - start) / 60
                print(f"[paper] {name}: finished in {timings[name]:.1f} min", flush=True)
    return failed, timings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scale", default="cpu", help="cpu (default), gpu or 1.3b: see study.toml")
    p.add_argument("--runs", nargs="*", help="only these runs (default: all of the study's)")
    p.add_argument("--no-figures", action="store_true", help="train only")
    p.add_argument("--out", default=str(REPO / "figures"), help="figure directory")
    p.add_argument("--study", default=str(STUDY), help="the study file (default: paper-mini's)")
    p.add_argument("--parallel", type=int, help="runs trained at once (default: the scale's)")
    args = p.parse_args(argv)

    started = time.perf_counter()
    scale, runs = load_study(Path(args.study), args.scale)
    check_runs(runs)
    chosen = args.runs or list(runs)
    unknown = sorted(set(chosen) - set(runs))
    if unknown:
        print(f"error: unknown run(s) {unknown}; the study has {', '.join(runs)}", file=sys.stderr)
        return 2
    parallel = args.parallel if args.parallel is not None else int(scale.get("parallel", 1))
    if parallel < 1:
        print(f"error: --parallel must be >= 1, got {parallel}", file=sys.stderr)
        return 2
    runs_dir = REPO / scale["runs_dir"]
    jobs = []
    for name in chosen:
        run_dir = runs_dir / name
        if (run_dir / FINAL).exists():
            print(f"[paper] {name}: finished ({run_dir})")
            continue
        state = "resuming" if (run_dir / RESUME).exists() else "training"
        print(f"[paper] {name}: {state} in {run_dir}", flush=True)
        jobs.append((name, train_command(scale, name, runs[name], run_dir), run_dir))
    data_started = time.perf_counter()
    if jobs:
        ensure_data(scale)
    data_minutes = (time.perf_counter() - data_started) / 60
    training_started = time.perf_counter()
    rc, timings = train_all(jobs, parallel)
    training_minutes = (time.perf_counter() - training_started) / 60
    if rc:
        return rc
    if timings:
        each = ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
        print(f"[paper] trained {len(timings)} runs, {parallel} at a time, in "
              f"{(time.perf_counter() - started) / 60:.1f} min (minutes each: {each})")  # fmt: skip
    if args.no_figures:
        return 0
    cmd = [sys.executable, "-m", "labkit.cli", "figures", "--runs", str(runs_dir)]
    figures_started = time.perf_counter()
    rc = subprocess.call([*cmd, "--out", args.out], cwd=REPO)
    figures_minutes = (time.perf_counter() - figures_started) / 60
    minutes = (time.perf_counter() - started) / 60
    print(f"[paper] make paper took {minutes:.1f} min in all")
    if rc == 0 and len(timings) == len(runs) and not args.runs:
        # a complete `make paper` from nothing: what the study costs, for the README to cite
        from labkit.figures import save_results

        save_results(args.out, "study", {
            "make_paper_minutes": round(minutes, 1), "parallel": parallel,
            "data_minutes": round(data_minutes, 1), "training_minutes": round(training_minutes, 1),
            "figures_minutes": round(figures_minutes, 1),
            "train_minutes": {k: round(v, 1) for k, v in timings.items()},
            "cpu_count": os.cpu_count(), "scale": args.scale,
        })  # fmt: skip
    return rc


if __name__ == "__main__":
    sys.exit(main())
