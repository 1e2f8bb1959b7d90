"""Everything around the optimisation loop, so the trainer (pretrain/run.py) keeps only the loop.

    prepare_data(cfg, d, root)   the run's data set, built once (rank 0) when it has no manifest
    claim_run_dir(cfg, d, ...)   the run directory locked by rank 0 (`labkit.run.RunWriter`), and
                                 the config every rank must use (the pinned one on --resume)
    TrainingSession(...)         one start of a run, given its parts (model wrapper, optimizers,
                                 loader, data set): restores or seeds the state, writes metrics
                                 (JSONL, TensorBoard, optional W&B), keeps a best checkpoint under
                                 the GOLD guards, writes milestones and resume states on their
                                 schedule, and closes the run (final.json, runs/index.jsonl, next
                                 commands) or stops it on a signal.

A session builds nothing: the trainer prepares the data, claims the directory and builds the model
and optimizers, then hands them over. Each piece below is one short method.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from labkit.config import TrainConfig
from labkit.errors import EXIT_SIGINT, EXIT_SIGTERM, LabkitError, RunDirError
from labkit.fileio import atomic_write_bytes
from labkit.parallel import Dist
from labkit.resources import checkout, find
from labkit.run import layout
from labkit.run.checkpoint import load_resume_state, save_checkpoint, save_resume_state
from labkit.run.lifecycle import RunWriter, resolve_config
from labkit.run.milestone import Milestone, list_milestones

# Dense bf16 peak FLOP/s per device, for MFU; matched against torch.cuda.get_device_name().
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165e12,
    "3090": 71e12,
    "V100": 125e12,
}


class TrainingError(LabkitError):
    """Training cannot go on (e.g. non-finite losses); the resume states are intact."""


@dataclass
class TrainState:
    """The loop's counters; with the loader's position and the RNGs, what a resume restores."""

    total_steps: int
    step: int = 0
    tokens: int = 0
    skipped: int = 0
    bad_run: int = 0  # non-finite steps in a row
    evals: list[dict] = field(default_factory=list)
    best_val: float = math.inf
    last_loss: float = float("nan")
    lr: float = 0.0


# --------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG of this process, as JSON."""
    state = {
        "python": _jsonable(random.getstate()),
        "numpy": _jsonable(np.random.get_state()),
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tupled(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    return x


def _tupled(x):
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x


def git_commit(cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def gold_guards(history: list[dict], current: dict, train_loss: float) -> dict[str, bool]:
    """Seed 004's guards for keeping a best checkpoint."""
    val = current["val_mean"]
    previous = [h["val_mean"] for h in history]
    first = history[0]["val"] if history else current["val"]
    return {
        "val_train_ratio": val / max(train_loss, 1e-9) <= 5.0,
        "no_rise_before_dip": len(previous) < 2 or previous[-1] <= previous[-2],
        "no_split_regression": all(
            current["val"][s] <= 1.2 * first[s] for s in current["val"] if s in first
        ),
    }


def milestone_due(cfg: TrainConfig, step: int, tokens_before: int, tokens_after: int, total: int):
    """Log-spaced early (steps 1, 2, 4, ...), then every `checkpoint.every_tokens`, then final."""
    c = cfg.checkpoint
    log_spaced = step <= c.log_spaced_until_step and (step & (step - 1)) == 0
    crossed = tokens_after // c.every_tokens > tokens_before // c.every_tokens
    return log_spaced or crossed or step == total


class Metrics:
    """metrics.jsonl (the run directory's documented keys), TensorBoard, optional W&B; rank 0
    only."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, enabled: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = run_dir / layout.METRICS
        self.tb = self.wandb = None
        if not enabled:
            return
        # (rows a killed run logged after its resume state were dropped by RunWriter.repair_metrics)
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(
                str(run_dir / layout.TENSORBOARD),
                purge_step=resume_step + 1 if resume_step is not None else None,
            )
        if cfg.log.wandb:
            try:
                import wandb

                self.wandb = wandb.init(
                    project=cfg.log.wandb_project,
                    name=run_dir.name,
                    config=cfg.to_dict(),
                    resume="allow",
                    id=run_dir.name,
                )
            except Exception as err:  # W&B is optional; never lose a run over it
                print(f"warning: W&B disabled: {err}")

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:  # one write per row, flushed when the file closes
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if self.tb and k != "step" and isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, record["step"])
        if self.wandb:
            self.wandb.log({k: v for k, v in record.items() if v is not None}, step=record["step"])

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


# --------------------------------------------------------------------------- before a session
@dataclass(frozen=True)
class TrainingData:
    """The built data set a run trains on, as its milestones record it."""

    path: Path
    manifest_sha256: str
    tokenizer_json: bytes  # copied into every milestone, so a milestone loads by itself


def config_path(p: str, root: Path) -> Path:
    """A config's relative path: under `root`; a shipped config when only that exists."""
    if Path(p).is_absolute():
        return Path(p)
    here = root / p
    return here if here.exists() or not find(p).exists() else find(p).resolve()


def prepare_data(cfg: TrainConfig, d: Dist, root: Path) -> TrainingData:
    """The config's data set, built on rank 0 first if it has no manifest (every rank waits)."""
    from labkit.data.build import load_manifest, tokenizer_bytes

    data_dir = config_path(cfg.data.dir, root)
    if not (data_dir / "manifest.json").exists():
        if not cfg.data.config:
            raise FileNotFoundError(
                f"no data set at {data_dir}: build one with `labkit data build --config "
                f"pretrain/configs/data/demo.toml --out {cfg.data.dir}`, or set data.config"
            )
        if d.main:
            from labkit.config import DataConfig
            from labkit.data.build import build

            data_cfg = config_path(cfg.data.config, root)
            print(f"data set {data_dir} not found: building it from {data_cfg} (once)")
            build(DataConfig.load(data_cfg), data_dir)
        d.barrier()
    manifest = load_manifest(data_dir)  # an incomplete data set: one line naming the file
    return TrainingData(
        path=data_dir,
        manifest_sha256=hashlib.sha256((data_dir / "manifest.json").read_bytes()).hexdigest(),
        tokenizer_json=tokenizer_bytes(data_dir, manifest),  # checked against the manifest
    )


@dataclass
class ClaimedRunDir:
    """A run directory claimed for one start: rank 0 holds its writer (the lock); every rank
    has the path and the config settled under that lock."""

    cfg: TrainConfig
    path: Path
    writer: RunWriter | None
    changes: dict
    resume: bool
    finished: dict | None = None  # final.json's record when `--resume` found the run finished

    def finished_line(self) -> str:
        """What `--resume` of a finished run says: finished, and nothing was changed."""
        f = self.finished or {}
        what = ", ".join(
            x
            for x in (
                f"step {f['step']}" if "step" in f else "",
                f"{f['tokens']:,} tokens" if isinstance(f.get("tokens"), int) else "",
                f"final train loss {f['loss']:.3f}" if isinstance(f.get("loss"), float) else "",
            )
            if x
        )
        return (
            f"{self.path} is finished ({layout.FINAL}{': ' + what if what else ''}): nothing to "
            "resume and nothing was changed; to train further, start a new --run-dir with a "
            "larger train.tokens"
        )

    def close(self) -> None:
        """Release the directory (removing it if this start never used it)."""
        if self.writer is not None:
            self.writer.discard_if_unused()
            self.writer.close()


def choose_dir(run_dir: str | None, resume: bool, cfg: TrainConfig, runs_root: Path) -> Path:
    """`run_dir`; with `resume` and none given, the newest runs/<name>-*; else a new one."""
    if run_dir:
        return Path(run_dir)
    previous = sorted(runs_root.glob(f"{cfg.name}-*")) if resume and runs_root.exists() else []
    stamp = f"{dt.datetime.now():%Y%m%d-%H%M%S}"
    return previous[-1] if previous else runs_root / f"{cfg.name}-{stamp}"


def claim_run_dir(cfg: TrainConfig, d: Dist, *, run_dir: str | None, resume: bool,
                  lock_wait: float, config: str | None, sets: list[str], default_config: Path,
                  root: Path) -> ClaimedRunDir:  # fmt: skip
    """Rank 0 locks the run dir and settles the config (the pinned one on `resume`); every rank
    gets the same path and config, or the same one-line error. A relative default (`runs/`) is
    taken from `root`."""
    writer, outcome = None, None
    if d.main:
        try:
            path = choose_dir(run_dir, resume, cfg, root / "runs")
            writer = RunWriter.open(path, resume, lock_wait)
            cfg, changes = resolve_config(path, config, sets, default_config)
            finished = writer.finished() if resume else None
            outcome = {"path": str(path), "cfg": cfg.to_dict(), "changes": changes,
                       "finished": finished}  # fmt: skip
        except (ValueError, OSError) as err:
            if writer is not None:
                writer.discard_if_unused()
            d.broadcast({"error": str(err)})
            raise
    outcome = d.broadcast(outcome)
    if "error" in outcome:
        raise RunDirError(outcome["error"])
    return ClaimedRunDir(TrainConfig.from_dict(outcome["cfg"]), Path(outcome["path"]), writer,
                         outcome["changes"], resume, outcome["finished"])  # fmt: skip


# --------------------------------------------------------------------------- the session
class TrainingSession:
    """One start of a training run, seen from every rank (only rank 0 writes): given the
    claimed directory and the parts the trainer built, it keeps the run's state, logs and
    checkpoints."""

    def __init__(self, claimed: ClaimedRunDir, d: Dist, *, par, optimizers: list, loader,
                 data: TrainingData):  # fmt: skip
        self.cfg, self.d, self.path = claimed.cfg, d, claimed.path
        self.dir, self.changes, self.resume = claimed.writer, claimed.changes, claimed.resume
        self.par, self.optimizers, self.loader, self.data = par, optimizers, loader, data
        self.metrics: Metrics | None = None
        self.last_good: Path | None = None  # the newest resume state written or loaded
        self.saved_step = -1
        self.t_start = time.time()
        self.commit = git_commit(checkout() or Path.cwd())  # the code that trains

    # ------------------------------------------------------------------ start / resume
    def start(self, total_steps: int) -> TrainState:
        """Restore the newest resume state (or seed every RNG), pin the config of a new run,
        repair metrics.jsonl, record the start in history.jsonl and open the metrics sink."""
        cfg, d, run = self.cfg, self.d, self.dir
        state = TrainState(total_steps=total_steps, lr=cfg.train.lr)
        pinned = self.path / layout.CONFIG
        if run is not None:
            for action in run.clean_stale_temp_dirs():
                print(f"run dir: {action} (left by a killed writer)")
        d.barrier()
        resume_from = None
        if self.resume and pinned.exists():
            resume_from = d.broadcast(run.latest_resume_state() if run is not None else None)
        if resume_from is not None:
            self._restore(resume_from, state)
        else:
            seed_everything(cfg.seed + d.rank)
        if run is not None:
            self._record_start(run, pinned.exists(), resume_from, state.step)
        self.metrics = Metrics(self.path, cfg, d.main, state.step if pinned.exists() else None)
        return state

    def _restore(self, path: Path, state: TrainState) -> None:
        tensors, optim_state, saved = load_resume_state(path)
        self.par.load_state_dicts(tensors, self.optimizers, optim_state)
        state.step, state.tokens, state.skipped = (
            saved["step"],
            saved["tokens"],
            saved["skipped_steps"],
        )
        state.evals, state.best_val = saved["evals"], saved["best_val"]
        # the last step's loss, so a run resumed at its last step finishes with a real loss
        state.last_loss = saved.get("last_loss", Milestone.read(path).train_loss or math.nan)
        self.loader.load_state_dict(saved["position"])
        ranks = saved["rng"]
        set_rng_state(ranks[self.d.rank] if len(ranks) == self.d.world else ranks[0])
        self.last_good, self.saved_step = path, state.step
        if self.d.main:
            print(f"resumed from {path} (step {state.step}, {state.tokens:,} tokens)")

    def _record_start(self, run: RunWriter, resumed: bool, resume_from, step: int) -> None:
        if not resumed:
            run.pin(self.cfg, self.par.model.cfg.to_dict())  # the run's config, from now on
        elif self.resume and resume_from is None:
            print(f"{self.path} has no resume state yet: restarting it from step 0")
        if self.resume and not resumed:
            print(f"{self.path} holds no run yet: starting a fresh one")
        for warning in run.repair_metrics(step) if resumed else []:
            print(f"warning: {warning}")
        run.record(
            "resume" if resumed else "start",
            step=step,
            argv=sys.argv[1:],
            changed={k: list(v) for k, v in self.changes.items()},
            data_passes=self.loader.data.passes,  # how often it reads each source
        )

    # ------------------------------------------------------------------ during the loop
    def compiled(self, seq_len: int, seconds: float) -> None:
        """The compiled step was built for `seq_len`: its cost (the first step at this length,
        tracing and compiling included) is printed and kept in history.jsonl."""
        if self.d.main:
            tqdm.write(f"compiled the training step for sequence length {seq_len} in "
                       f"{seconds:.1f} s")  # fmt: skip
            self.dir.record("compile", seq_len=seq_len, seconds=round(seconds, 2))

    def debug_kill(self, step: int) -> None:
        """`debug.kill_at_step`: the last rank dies as a node would (first attempt only)."""
        d = self.d
        if (
            self.cfg.debug.kill_at_step
            and step == self.cfg.debug.kill_at_step
            and d.rank == d.world - 1
            and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        ):
            os.kill(os.getpid(), signal.SIGKILL)

    def skip_step(self, state: TrainState, loss: float, grad_norm: float) -> None:
        """A non-finite step is skipped; `train.max_bad_steps` in a row stop the run."""
        state.skipped += 1
        state.bad_run += 1
        if self.d.main:
            tqdm.write(
                f"step {state.step}: non-finite loss ({loss}) or gradient norm ({grad_norm}); "
                "step skipped"
            )
        if state.bad_run >= self.cfg.train.max_bad_steps:
            raise TrainingError(
                f"stopping: {state.bad_run} non-finite losses in a row (last at step "
                f"{state.step}). Nothing after the last good state was written; resume from "
                f"{self.last_good or 'the start'} with a lower train.lr or check the data."
            )

    def log_step(self, state: TrainState, loss: float, grad_norm: float, tokens_per_s: float,
                 seq_len: int, step_tokens: int) -> None:  # fmt: skip
        """One metrics.jsonl row: step, tokens, loss, lr, grad norms, tokens/s, MFU (against the
        device's bf16 peak), memory, and the curriculum's position."""
        d, t, mcfg = self.d, self.cfg.train, self.par.model.cfg
        peak = t.peak_flops or next(
            (v for k, v in PEAK_FLOPS.items() if d.device.type == "cuda"
             and k in torch.cuda.get_device_name()), 0.0,
        )  # fmt: skip
        mem = (
            torch.cuda.max_memory_allocated(d.device)
            if d.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        mfu = mcfg.flops_per_token(seq_len) * tokens_per_s / (peak * d.world) if peak else None
        self.metrics.write(
            {
                "step": state.step,
                "tokens": state.tokens,
                "loss": loss,
                "lr": state.lr,
                "grad_norm": grad_norm,
                "grad_norm_clipped": min(grad_norm, t.grad_clip),
                "tokens_per_s": tokens_per_s,
                "mfu": mfu,
                "mem_bytes": int(mem),
                "seq_len": seq_len,
                "stage": self.loader.stage_name,
                "tokens_per_step": step_tokens,
                "skipped_steps": state.skipped,
            }
        )

    def evaluated(self, state: TrainState, val: dict[str, float], train_loss: float) -> None:
        """Log validation losses; keep a `best` checkpoint when the GOLD guards all pass."""
        current = {
            "step": state.step,
            "tokens": state.tokens,
            "val": val,
            "val_mean": sum(val.values()) / len(val),
        }
        guards = gold_guards(state.evals, current, train_loss)
        is_best = current["val_mean"] < state.best_val and all(guards.values())
        state.evals.append(current)
        self.metrics.write(
            {
                "step": state.step,
                "tokens": state.tokens,
                **{f"val/{k}": v for k, v in val.items()},
                "val/mean": current["val_mean"],
                "best": is_best,
            }
        )
        if is_best:
            state.best_val = current["val_mean"]
            self.save_milestone(state, layout.BEST, {"guards": guards})

    def checkpoint(self, state: TrainState, tokens_before: int) -> None:
        """After an optimizer step: a milestone and/or a resume state when one is due."""
        if milestone_due(self.cfg, state.step, tokens_before, state.tokens, state.total_steps):
            self.save_milestone(state, layout.milestone_name(state.tokens))
        every = self.cfg.checkpoint.resume_every_steps
        if state.step % every == 0 or state.step == state.total_steps:
            self.save_resume(state)

    def _meta(self, state: TrainState, kind: str, extra: dict | None = None) -> dict:
        return {
            "kind": kind,
            "step": state.step,
            "tokens": state.tokens,
            "train_loss": state.last_loss,
            "lr": state.lr,
            "val": state.evals[-1]["val"] if state.evals else None,
            "wall_time_s": round(time.time() - self.t_start, 2),
            "git_commit": self.commit,
            "data_manifest_sha256": self.data.manifest_sha256,
            "data_dir": str(self.data.path),
            "mix": self.cfg.data.mix,
            "run": self.path.name,
            **(extra or {}),
        }

    def initial_milestone(self, state: TrainState) -> None:
        """The step-0 milestone (`checkpoint.save_init`) of a run that has not stepped yet: the
        untrained weights, for the baselines and floors of the analyses."""
        if self.cfg.checkpoint.save_init and state.step == 0:
            self.save_milestone(state, layout.milestone_name(0), {"init": True})

    def save_milestone(self, state: TrainState, name: str, extra: dict | None = None) -> None:
        """checkpoints/<name>/: weights, config, meta and the tokenizer (it loads by itself)."""
        tensors, _ = self.par.state_dicts()
        if self.d.main:
            save_checkpoint(
                self.path / layout.CHECKPOINTS / name,
                tensors,
                self.par.model.cfg,
                self._meta(state, "milestone", extra),
                extra={layout.TOKENIZER: self.data.tokenizer_json},
            )

    def save_resume(self, state: TrainState) -> None:
        """resume/step_N/: model, optimizer, counters, data position and every rank's RNG,
        written atomically; the last `checkpoint.keep_last` are kept."""
        tensors, optim_state = self.par.state_dicts(self.optimizers)
        rngs = self.d.gather(rng_state())
        path = self.path / layout.RESUME / layout.resume_name(state.step)
        if self.d.main:
            trainer = {
                "step": state.step,
                "tokens": state.tokens,
                "position": self.loader.state_dict(),
                "skipped_steps": state.skipped,
                "evals": state.evals,
                "best_val": state.best_val,
                "last_loss": state.last_loss,
                "rng": rngs,
                "total_steps": state.total_steps,
                "world_size": self.d.world,
            }
            meta = self._meta(state, "resume")
            save_resume_state(path, tensors, self.par.model.cfg, optim_state, trainer, meta)
            states = sorted((self.path / layout.RESUME).glob("step_*"))
            for p in states[: -self.cfg.checkpoint.keep_last]:
                shutil.rmtree(p, ignore_errors=True)
        self.d.barrier()
        self.last_good, self.saved_step = path, state.step

    # ------------------------------------------------------------------ the end
    def stopped(self, signum: int, state: TrainState) -> dict:
        """After SIGINT/SIGTERM: save a resume state if the last step has none; say how to go on."""
        if self.saved_step != state.step:
            self.save_resume(state)
        if self.d.main:
            self.metrics.close()
            self.dir.record("stop", step=state.step, signal=signal.Signals(signum).name)
            print(
                f"\nstopped by {signal.Signals(signum).name} after step {state.step}; resume "
                f"state saved. Continue with its own config:\n"
                f"  python pretrain/run.py --run-dir {self.path} --resume"
            )
        self.d.close()
        return {
            "step": state.step,
            "stopped": EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM,
        }

    def finish(self, state: TrainState) -> dict:
        """final.json (the marker of a finished run), a runs/index.jsonl record, a summary."""
        final = {
            "step": state.step,
            "tokens": state.tokens,
            "loss": state.last_loss,
            "val": state.evals[-1]["val"] if state.evals else None,
            "best_val_mean": state.best_val if math.isfinite(state.best_val) else None,
            "skipped_steps": state.skipped,
        }
        if self.d.main:
            self.metrics.close()
            self._write_final(final)
            self._summary(state, final)
            self.dir.record("finish", step=state.step, tokens=state.tokens)
        self.d.close()
        return final

    def _write_final(self, final: dict) -> None:
        d = self.d
        device_name = torch.cuda.get_device_name() if d.device.type == "cuda" else "cpu"
        record = {
            "experiment_id": self.path.name,
            "timestamp": dt.datetime.now().isoformat(timespec="seconds"),
            "git_commit": self.commit,
            "device": f"{d.world} x {device_name}",
            "run_dir": str(self.path),
            "config": self.cfg.to_dict(),
            "model": self.par.model.cfg.to_dict(),
            "final": final,
        }
        with (self.path.parent / layout.INDEX).open("a") as f:
            f.write(json.dumps(record) + "\n")
        text = json.dumps(record, indent=2) + "\n"
        atomic_write_bytes(self.path / layout.FINAL, text.encode())  # `make paper` reads it

    def _summary(self, state: TrainState, final: dict) -> None:
        milestones = list_milestones(self.path)
        print(
            f"\ndone: {state.step} steps, {state.tokens:,} tokens, final train loss "
            f"{state.last_loss:.3f}"
        )
        if final["val"]:
            print("validation: " + ", ".join(f"{k} {v:.3f}" for k, v in final["val"].items()))
        print(
            f"{len(milestones)} milestones in {self.path / layout.CHECKPOINTS} "
            f"(first {milestones[0].name}, last {milestones[-1].name})"
        )
        for line in next_commands(self.path, milestones[-1], sorted(final["val"] or {})):
            print(line)


def next_commands(run_dir: Path, last: Path, splits: list[str]) -> list[str]:
    """Ready-to-run next steps for this run, with the interpreter's own bin directory (e.g.
    .venv/bin/) so they work without activating the environment."""
    bin_dir = Path(sys.executable).parent
    if bin_dir.is_relative_to(Path.cwd()):
        bin_dir = bin_dir.relative_to(Path.cwd())
    py, labkit = bin_dir / "python", bin_dir / "labkit"
    split = splits[0] if splits else "NAME"
    # The shipped probes read world-generated text: for a run on own text, a `kind: data` spec.
    own = "general" not in splits
    target = "SPEC --probes-dir DIR" if own else "digit"
    return [
        "next:",
        f"  {labkit} probe --run {run_dir} --layer all --target {target} --milestones first,last"
        + ("   # a `kind: data` spec: README, Your own data" if own else ""),
        f"  {labkit} eval perplexity --run {run_dir} --split {split} --milestones first,last",
        f"  {labkit} export --checkpoint {last} --out {run_dir / 'hf'}",
        f"  {py} -c \"from labkit.run import load; model, milestone = load('{last}')\"",
        f"  {bin_dir / 'tensorboard'} --logdir {run_dir / layout.TENSORBOARD}",
        f"  {py} pretrain/run.py --run-dir {run_dir} --resume   # after a crash",
    ]


__all__ = [
    "PEAK_FLOPS",
    "Metrics",
    "TrainState",
    "TrainingError",
    "ClaimedRunDir",
    "TrainingData",
    "TrainingSession",
    "claim_run_dir",
    "prepare_data",
    "gold_guards",
    "milestone_due",
    "next_commands",
]
