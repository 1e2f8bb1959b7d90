"""labkit's trainer.

    python pretrain/run.py                                  # demo.toml: tiny MLA on the demo corpus
    torchrun --standalone --nproc_per_node=2 pretrain/run.py --config pretrain/configs/ci.toml
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        pretrain/run.py --config pretrain/configs/paper-mla-1.3b.toml --run-dir runs/mla --resume

Duration is in tokens. Each optimizer step reaches a target global token batch by gradient
accumulation; the LR warms up linearly and decays on a cosine to 10 % of peak over a step count
computed once from the token target; AdamW (0.9, 0.95), weight decay on matrices only, clipping at
1.0 (norm logged before and after), bf16 autocast, optional Muon and torch.compile. Data comes from
a built data set's mix, whose curriculum stages switch at token counts alongside a sequence-length
schedule, under one LR schedule.

Checkpoints: milestones by tokens seen (after steps 1, 2, 4, 8, ... then every N tokens, then the
final one), each loadable with `labkit.checkpoint.load`; resume states (model, optimizer, schedule,
data position, every rank's RNG) every K steps, written atomically, the last few kept. `--resume`
continues bit-identically on the CPU; it also makes `torchrun --max-restarts` restarts resume.
"""

from __future__ import annotations

import argparse
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
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from labkit import checkpoint as ckpt  # noqa: E402
from labkit.config import TrainConfig  # noqa: E402
from labkit.data.loader import MixedData, Position, eval_windows  # noqa: E402
from labkit.errors import (  # noqa: E402
    EXIT_SIGINT,
    EXIT_SIGTERM,
    LabkitError,
    RunDirError,
    one_line_errors,
)
from labkit.fileio import atomic_write_bytes  # noqa: E402
from labkit.model import LabModel  # noqa: E402
from labkit.runs import RunDir, StopSignals, resolve_config  # noqa: E402

DEFAULT_CONFIG = REPO / "pretrain" / "configs" / "demo.toml"
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


# --------------------------------------------------------------------------- setup
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="labkit trainer",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument(
        "--config",
        help="TOML config (default: demo; with --resume, the run's own pinned config.json)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value",
    )
    p.add_argument("--run-dir", help="run directory (default: runs/<name>-<timestamp>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir under its pinned config (a new run if it is empty)",
    )
    p.add_argument(
        "--lock-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another trainer to release the run dir (default: fail at once)",
    )
    p.add_argument(
        "--trust-unverified",
        action="store_true",
        help="accept checkpoints without checksums (written by older labkits)",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one line")
    return p.parse_args(argv)


class Dist:
    """Rank, world and device; a single process when not launched by torchrun."""

    def __init__(self, backend: str, timeout_s: float = 600.0):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1:
            backend = backend if backend != "auto" else ("nccl" if cuda else "gloo")
            # a stopped or lost rank fails the group after `parallel.timeout_s`, not 30 minutes
            dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s))
        self.main = self.rank == 0

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def ensure_data(cfg: TrainConfig, d: Dist) -> Path:
    """The data set of the config, built on rank 0 first if it has no manifest."""
    data_dir = Path(cfg.data.dir)
    if not data_dir.is_absolute():
        data_dir = REPO / data_dir
    if not (data_dir / "manifest.json").exists():
        if not cfg.data.config:
            raise FileNotFoundError(
                f"no data set at {data_dir}: build one with `labkit data build --config "
                f"pretrain/configs/data/demo.toml --out {cfg.data.dir}`, or set data.config"
            )
        if d.main:
            from labkit.config import DataConfig
            from labkit.data.build import build

            data_cfg = Path(cfg.data.config)
            data_cfg = data_cfg if data_cfg.is_absolute() else REPO / data_cfg
            print(f"data set {data_dir} not found: building it from {data_cfg} (once)")
            build(DataConfig.load(data_cfg), data_dir)
        d.barrier()
    return data_dir


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
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


# --------------------------------------------------------------------------- model and optimizer
def build_model(
    cfg: TrainConfig, vocab_size: int, d: Dist
) -> tuple[LabModel, torch.nn.Module, str]:
    """The LabModel, the module the training step calls (DDP / FSDP2 / plain), and the strategy."""
    mcfg = cfg.model_config(vocab_size)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = LabModel(mcfg).to(d.device)
    strategy = cfg.parallel.strategy
    if strategy == "auto":
        strategy = "fsdp" if mcfg.num_params() > 300e6 and d.world > 1 else "ddp"
    if cfg.train.optimizer == "muon" and strategy == "fsdp":
        raise ValueError(
            "train.optimizer = 'muon' needs whole matrices: use parallel.strategy = 'ddp'"
        )
    step_module: torch.nn.Module = model
    if d.world > 1 and strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        step_module = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    elif d.world > 1 and strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    if cfg.train.compile:
        step_module = torch.compile(step_module)
    return model, step_module, strategy if d.world > 1 else "single"


def build_optimizers(cfg: TrainConfig, model: LabModel) -> list[torch.optim.Optimizer]:
    """AdamW with weight decay on matrices only; with `muon`, Muon takes the blocks' matrices."""
    t = cfg.train
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    muon = [
        p for n, p in named if t.optimizer == "muon" and n.startswith("blocks.") and p.ndim == 2
    ]
    muon_ids = {id(p) for p in muon}
    decay = [p for n, p in named if p.ndim >= 2 and id(p) not in muon_ids]
    no_decay = [p for n, p in named if p.ndim < 2]
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    opts = [
        torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": t.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=t.lr,
            betas=(t.beta1, t.beta2),
            **fused,
        )
    ]
    if muon:
        opts.append(
            torch.optim.Muon(
                muon, lr=t.muon_lr, weight_decay=t.weight_decay, adjust_lr_fn="match_rms_adamw"
            )
        )
    for opt in opts:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return opts


def lr_factor(step: int, total_steps: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup, then cosine from 1 to `min_ratio` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- state dicts
def full_model_state(model: LabModel, strategy: str) -> dict[str, torch.Tensor]:
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def full_optimizer_state(model: LabModel, opts: list, strategy: str) -> dict:
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return {
            "fsdp": get_optimizer_state_dict(
                model, opts, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        }
    return {"optimizers": [o.state_dict() for o in opts]}


def restore(model: LabModel, opts: list, strategy: str, tensors: dict, optim_state: dict) -> None:
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        if model.cfg.tie_embeddings:
            tensors = dict(tensors, **{"unembed.weight": tensors["embed.weight"]})
        set_model_state_dict(model, tensors, options=options)
        set_optimizer_state_dict(model, opts, optim_state["fsdp"], options=options)
        return
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if [m for m in missing if m != "unembed.weight"] or unexpected:
        raise ckpt.CheckpointError(
            f"resume state does not fit the model: missing {missing}, extra {unexpected}"
        )
    for opt, state in zip(opts, optim_state["optimizers"], strict=True):
        opt.load_state_dict(state)


# --------------------------------------------------------------------------- logging
class Metrics:
    """metrics.jsonl (DESIGN.md keys), TensorBoard, optional W&B; rank 0 only."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, enabled: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = self.wandb = None
        if not enabled:
            return
        # (rows a killed run logged after its resume state were dropped by RunDir.repair_metrics)
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(
                str(run_dir / "tensorboard"),
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


# --------------------------------------------------------------------------- run directory
def choose_run_dir(args: argparse.Namespace, cfg: TrainConfig) -> Path:
    """--run-dir; with --resume and none given, the newest runs/<name>-*; else a new one."""
    if args.run_dir:
        return Path(args.run_dir)
    runs = REPO / "runs"
    previous = sorted(runs.glob(f"{cfg.name}-*")) if args.resume and runs.exists() else []
    return previous[-1] if previous else runs / f"{cfg.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def open_run(
    args: argparse.Namespace, cfg: TrainConfig, d: Dist
) -> tuple[RunDir | None, Path, TrainConfig, dict]:
    """Rank 0 locks the run dir and settles the config (the pinned one on --resume); every rank
    gets the same path and config, or the same one-line error."""
    run, outcome = None, None
    if d.main:
        try:
            path = choose_run_dir(args, cfg)
            run = RunDir.open(path, args.resume, args.lock_wait)
            cfg, changes = resolve_config(path, args.config, args.set, DEFAULT_CONFIG)
            outcome = {"path": str(path), "cfg": cfg.to_dict(), "changes": changes}
        except (ValueError, OSError) as err:
            if run is not None:
                run.discard_if_unused()
            d.broadcast({"error": str(err)})
            raise
    outcome = d.broadcast(outcome)
    if "error" in outcome:
        raise RunDirError(outcome["error"])
    return run, Path(outcome["path"]), TrainConfig.from_dict(outcome["cfg"]), outcome["changes"]


# --------------------------------------------------------------------------- training
def train(cfg: TrainConfig, args: argparse.Namespace) -> dict:
    stop = StopSignals()
    d = Dist(cfg.parallel.backend, cfg.parallel.timeout_s)
    run, run_dir, cfg, changes = open_run(args, cfg, d)
    try:
        return _train(cfg, args, d, run, run_dir, changes, stop)
    finally:
        if run is not None:
            run.discard_if_unused()
            run.close()


def _train(
    cfg: TrainConfig,
    args: argparse.Namespace,
    d: Dist,
    run: RunDir | None,
    run_dir: Path,
    changes: dict,
    stop: StopSignals,
) -> dict:
    data_dir = ensure_data(cfg, d)
    data = MixedData(data_dir, cfg.data.mix, cfg.train.tokens, cfg.seed)
    manifest_sha = hashlib.sha256((data_dir / "manifest.json").read_bytes()).hexdigest()
    tokenizer_json = (data_dir / ckpt.TOKENIZER_FILE).read_bytes()
    vocab = data.manifest["tokenizer"]["vocab_size"]

    model, step_module, strategy = build_model(cfg, vocab, d)
    opts = build_optimizers(cfg, model)
    mcfg = model.cfg
    t = cfg.train
    total_steps = math.ceil(t.tokens / t.batch_tokens)  # computed once, from the token target
    schedule = cfg.seq_lens()

    def seq_len_at(tokens: int) -> int:
        return [s for start, s in schedule if tokens >= start][-1]

    def accum_for(seq: int) -> int:
        return max(1, round(t.batch_tokens / (t.micro_batch * seq * d.world)))

    # Resume ------------------------------------------------------------------------------
    step, tokens_seen, pos, skipped, bad_run, evals, best_val = 0, 0, Position(), 0, 0, [], math.inf
    if run is not None:
        for action in run.clean_stale_temp_dirs():
            print(f"run dir: {action} (left by a killed writer)")
    d.barrier()
    resume_from = None
    if args.resume and (run_dir / "config.json").exists():
        resume_from = d.broadcast(run.latest_resume_state() if run is not None else None)
    if resume_from is not None:
        tensors, optim_state, state = ckpt.load_resume_state(resume_from)
        restore(model, opts, strategy, tensors, optim_state)
        step, tokens_seen, skipped = state["step"], state["tokens"], state["skipped_steps"]
        pos = Position(**state["position"])
        evals, best_val = state["evals"], state["best_val"]
        ranks = state["rng"]
        set_rng_state(ranks[d.rank] if len(ranks) == d.world else ranks[0])
        if d.main:
            print(f"resumed from {resume_from} (step {step}, {tokens_seen:,} tokens)")
    else:
        seed_everything(cfg.seed + d.rank)
    if run is not None:
        resumed = (run_dir / "config.json").exists()
        if not resumed:
            run.pin(cfg, mcfg.to_dict())  # the run's config, from now on
        elif args.resume and resume_from is None:
            print(f"{run_dir} has no resume state yet: restarting it from step 0")
        if args.resume and not resumed:
            print(f"{run_dir} holds no run yet: starting a fresh one")
        for warning in run.repair_metrics(step) if resumed else []:
            print(f"warning: {warning}")
        run.record(
            "resume" if resumed else "start",
            step=step,
            argv=sys.argv[1:],
            changed={k: list(v) for k, v in changes.items()},
        )
    metrics = Metrics(run_dir, cfg, d.main, step if (run_dir / "config.json").exists() else None)

    # Evaluation sets: fixed windows of each held-out split, at the base sequence length.
    splits = cfg.data.eval_splits or sorted(data.manifest["shards"]["eval"])
    eval_sets = {
        s: torch.from_numpy(eval_windows(data_dir, s, cfg.eval.tokens_per_split, t.seq_len))
        for s in splits
    }
    amp = (
        torch.autocast(d.device.type, dtype=torch.bfloat16)
        if t.precision == "bf16"
        else nullcontext()
    )

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        model.eval()
        out = {}
        for split, windows in eval_sets.items():
            total = torch.zeros(2, dtype=torch.float64, device=d.device)
            for i in range(d.rank * t.micro_batch, len(windows), d.world * t.micro_batch):
                batch = windows[i : i + t.micro_batch].to(d.device)
                with amp:
                    loss = model(batch[:, :-1], targets=batch[:, 1:], return_type="loss")
                n = batch[:, 1:].numel()
                total += torch.tensor([loss.item() * n, n], dtype=torch.float64, device=d.device)
            total = d.sum(total)
            out[split] = (total[0] / total[1]).item()
        model.train()
        return out

    def milestone_due(step_done: int, tokens_before: int, tokens_after: int) -> bool:
        c = cfg.checkpoint
        log_spaced = step_done <= c.log_spaced_until_step and (step_done & (step_done - 1)) == 0
        crossed = tokens_after // c.every_tokens > tokens_before // c.every_tokens
        return log_spaced or crossed or step_done == total_steps

    def meta(kind: str, extra: dict | None = None) -> dict:
        return {
            "kind": kind,
            "step": step,
            "tokens": tokens_seen,
            "train_loss": last_loss,
            "lr": lr_now,
            "val": evals[-1]["val"] if evals else None,
            "wall_time_s": round(time.time() - t_start, 2),
            "git_commit": commit,
            "data_manifest_sha256": manifest_sha,
            "data_dir": str(data_dir),
            "mix": cfg.data.mix,
            "run": run_dir.name,
            **(extra or {}),
        }

    def save_milestone(name: str, extra: dict | None = None) -> None:
        state = full_model_state(model, strategy)
        if d.main:
            ckpt.save_checkpoint(
                run_dir / "checkpoints" / name,
                state,
                mcfg,
                meta("milestone", extra),
                extra={ckpt.TOKENIZER_FILE: tokenizer_json},  # a milestone tokenizes by itself
            )

    def save_resume() -> Path:
        state = full_model_state(model, strategy)
        optim_state = full_optimizer_state(model, opts, strategy)
        rngs = d.gather(rng_state())
        path = run_dir / "resume" / f"step_{step:08d}"
        if d.main:
            trainer = {
                "step": step,
                "tokens": tokens_seen,
                "position": vars(pos),
                "skipped_steps": skipped,
                "evals": evals,
                "best_val": best_val,
                "rng": rngs,
                "total_steps": total_steps,
                "world_size": d.world,
            }
            ckpt.save_resume_state(path, state, mcfg, optim_state, trainer, meta("resume"))
            old = sorted((run_dir / "resume").glob("step_*"))[: -cfg.checkpoint.keep_last]
            for p in old:
                shutil.rmtree(p, ignore_errors=True)
        d.barrier()
        return path

    # Loop ----------------------------------------------------------------------------------
    commit = git_commit()
    t_start, last_loss, lr_now = time.time(), float("nan"), t.lr
    seq = seq_len_at(tokens_seen)
    accum = accum_for(seq)
    if d.main:
        print(
            f"{mcfg.name}: {mcfg.num_params():,} parameters, {strategy} on {d.world} x "
            f"{d.device.type}; "
            f"{total_steps} steps of {accum} x {t.micro_batch} x {seq} x {d.world} = "
            f"{accum * t.micro_batch * seq * d.world:,} tokens (target {t.batch_tokens:,}); "
            f"run dir {run_dir}"
        )
    bar = tqdm(
        total=total_steps, initial=step, desc="train", disable=not d.main, dynamic_ncols=True
    )
    window_t, window_tokens = time.time(), 0
    peak = t.peak_flops or next(
        (
            v
            for k, v in PEAK_FLOPS.items()
            if d.device.type == "cuda" and k in torch.cuda.get_device_name()
        ),
        0.0,
    )
    last_good = resume_from
    saved_step, stopping = (step if resume_from else -1), False
    if cfg.checkpoint.save_init and step == 0:
        save_milestone(f"tokens_{0:012d}", {"init": True})
    model.train()
    while step < total_steps:
        if stopping:  # a signal reached some rank during the last step: save, then leave
            if saved_step != step:
                last_good = save_resume()
            break
        if (
            cfg.debug.kill_at_step
            and step == cfg.debug.kill_at_step
            and d.rank == d.world - 1
            and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        ):
            os.kill(os.getpid(), signal.SIGKILL)  # a worker dies mid-run, as a node would
        stage = data.stage_at(tokens_seen)
        if stage != pos.stage:
            pos = Position(stage, 0)
        seq = seq_len_at(tokens_seen)
        accum = accum_for(seq)
        lr_now = t.lr * lr_factor(step, total_steps, t.warmup_steps, t.min_lr_ratio)
        for opt in opts:
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * lr_now / t.lr

        loss_sum = torch.zeros((), device=d.device)
        for micro in range(accum):
            windows = data.windows(pos, d.rank * t.micro_batch, t.micro_batch, seq)
            batch = torch.from_numpy(windows).to(d.device, non_blocking=True)
            pos.offset += t.micro_batch * seq * d.world
            last = micro == accum - 1
            sync = nullcontext()
            if d.world > 1 and strategy == "ddp" and not last:
                sync = step_module.no_sync()
            elif d.world > 1 and strategy == "fsdp":
                model.set_requires_gradient_sync(last)
            with sync:
                with amp:
                    loss = step_module(batch[:, :-1], targets=batch[:, 1:], return_type="loss")
                if step + 1 in cfg.debug.nan_at_steps:
                    loss = loss * float("nan")
                (loss / accum).backward()
            loss_sum += loss.detach() / accum
        step_tokens = accum * t.micro_batch * seq * d.world
        # one all-reduce carries the loss and whether any rank was asked to stop
        flag = torch.tensor(float(stop.signum), device=d.device)
        reduced = d.sum(torch.stack([loss_sum, flag.to(loss_sum.dtype)]))
        loss_avg = reduced[0].item() / d.world
        stopping = reduced[1].item() > 0
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        grad_norm = float(
            grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        )
        tokens_before = tokens_seen
        tokens_seen += step_tokens
        step += 1
        if not (math.isfinite(loss_avg) and math.isfinite(grad_norm)):
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            skipped += 1
            bad_run += 1
            if d.main:
                tqdm.write(
                    f"step {step}: non-finite loss ({loss_avg}) or gradient norm ({grad_norm}); "
                    "step skipped"
                )
            if bad_run >= t.max_bad_steps:
                raise TrainingError(
                    f"stopping: {bad_run} non-finite losses in a row (last at step {step}). "
                    f"Nothing after the last good state was written; resume from "
                    f"{last_good or 'the start'} with a lower "
                    f"train.lr or check the data."
                )
            continue
        bad_run = 0
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        last_loss = loss_avg
        window_tokens += step_tokens
        bar.update(1)

        if step % cfg.log.every_steps == 0 or step == total_steps:
            elapsed = max(time.time() - window_t, 1e-9)
            tps = window_tokens / elapsed
            mem = (
                torch.cuda.max_memory_allocated(d.device)
                if d.device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            )
            record = {
                "step": step,
                "tokens": tokens_seen,
                "loss": loss_avg,
                "lr": lr_now,
                "grad_norm": grad_norm,
                "grad_norm_clipped": min(grad_norm, t.grad_clip),
                "tokens_per_s": tps,
                "mfu": (mcfg.flops_per_token(seq) * tps / (peak * d.world)) if peak else None,
                "mem_bytes": int(mem),
                "seq_len": seq,
                "stage": data.stages[pos.stage]["name"],
                "tokens_per_step": step_tokens,
                "skipped_steps": skipped,
            }
            metrics.write(record)
            bar.set_postfix(loss=f"{loss_avg:.3f}", lr=f"{lr_now:.2e}", tok_s=f"{tps:,.0f}")
            window_t, window_tokens = time.time(), 0

        if step % cfg.eval.every_steps == 0 or step == total_steps:
            val = evaluate()
            current = {
                "step": step,
                "tokens": tokens_seen,
                "val": val,
                "val_mean": sum(val.values()) / len(val),
            }
            guards = gold_guards(evals, current, loss_avg)
            is_best = current["val_mean"] < best_val and all(guards.values())
            evals.append(current)
            metrics.write(
                {
                    "step": step,
                    "tokens": tokens_seen,
                    **{f"val/{k}": v for k, v in val.items()},
                    "val/mean": current["val_mean"],
                    "best": is_best,
                }
            )
            if is_best:
                best_val = current["val_mean"]
                save_milestone("best", {"guards": guards})
        if milestone_due(step, tokens_before, tokens_seen):
            save_milestone(f"tokens_{tokens_seen:012d}")
        if step % cfg.checkpoint.resume_every_steps == 0 or step == total_steps:
            last_good, saved_step = save_resume(), step
    bar.close()
    if stopping and step < total_steps:
        return stopped(stop.signum or signal.SIGTERM, run, run_dir, step, metrics, d)

    final = {
        "step": step,
        "tokens": tokens_seen,
        "loss": last_loss,
        "val": evals[-1]["val"] if evals else None,
        "best_val_mean": best_val if math.isfinite(best_val) else None,
        "skipped_steps": skipped,
    }
    if d.main:
        metrics.close()
        device_name = torch.cuda.get_device_name() if d.device.type == "cuda" else "cpu"
        record = {
            "experiment_id": run_dir.name,
            "timestamp": dt.datetime.now().isoformat(timespec="seconds"),
            "git_commit": commit,
            "device": f"{d.world} x {device_name}",
            "run_dir": str(run_dir),
            "config": cfg.to_dict(),
            "model": mcfg.to_dict(),
            "final": final,
        }
        with (run_dir.parent / "index.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        # The marker of a finished run: `make paper` and the registry read it.
        atomic_write_bytes(run_dir / "final.json", (json.dumps(record, indent=2) + "\n").encode())
        milestones = ckpt.list_milestones(run_dir)
        print(f"\ndone: {step} steps, {tokens_seen:,} tokens, final train loss {last_loss:.3f}")
        if final["val"]:
            print("validation: " + ", ".join(f"{k} {v:.3f}" for k, v in final["val"].items()))
        print(
            f"{len(milestones)} milestones in {run_dir / 'checkpoints'} "
            f"(first {milestones[0].name}, last {milestones[-1].name})"
        )
        for line in next_commands(run_dir, milestones[-1], sorted(final["val"])):
            print(line)
        run.record("finish", step=step, tokens=tokens_seen)
    if d.world > 1:
        dist.destroy_process_group()
    return final


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
        f"  {py} -c \"from labkit.checkpoint import load; model, meta = load('{last}')\"",
        f"  {bin_dir / 'tensorboard'} --logdir {run_dir / 'tensorboard'}",
        f"  {py} pretrain/run.py --run-dir {run_dir} --resume   # after a crash",
    ]


def stopped(signum: int, run: RunDir | None, run_dir: Path, step: int, metrics, d: Dist) -> dict:
    """After SIGINT/SIGTERM: the resume state is written; say how to continue."""
    if d.main:
        metrics.close()
        run.record("stop", step=step, signal=signal.Signals(signum).name)
        print(
            f"\nstopped by {signal.Signals(signum).name} after step {step}; resume state saved. "
            f"Continue with its own config:\n  python pretrain/run.py --run-dir {run_dir} --resume"
        )
    if d.world > 1:
        dist.destroy_process_group()
    return {"step": step, "stopped": EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.trust_unverified:
        os.environ["LABKIT_TRUST_UNVERIFIED"] = "1"

    def start() -> int:
        # Each rank reads the config itself (the pinned one on --resume) to join the group;
        # rank 0 settles it again under the run dir's lock.
        run_path = Path(args.run_dir) if args.run_dir and args.resume else None
        cfg, _ = resolve_config(run_path, args.config, args.set, DEFAULT_CONFIG)
        return train(cfg, args).get("stopped", 0)

    return one_line_errors("pretrain/run.py", start, args.debug)


if __name__ == "__main__":
    sys.exit(main())
