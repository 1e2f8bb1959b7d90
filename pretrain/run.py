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

This file is the loop: `Trainer.fit`. Everything around it (the data set, the run directory,
resume, metrics, milestones, GOLD guards) is `labkit.training` (`TrainingSession`); processes
and DDP/FSDP2 are `labkit.parallel`. To change the objective, subclass `Trainer` and override
`loss`, then call `main(trainer=YourTrainer)`.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
# In a checkout, relative paths (runs/, data.dir) are the checkout's and labkit imports from it
# without installing; the copy an installed wheel carries (labkit/shipped/run.py) uses the cwd.
IN_CHECKOUT = HERE.name == "pretrain" and (HERE.parent / "labkit" / "__init__.py").exists()
REPO = HERE.parent if IN_CHECKOUT else Path.cwd()
if IN_CHECKOUT:
    sys.path.insert(0, str(REPO))

from labkit.config import TrainConfig  # noqa: E402
from labkit.data.loader import Loader, MixedData, eval_windows, passes_report  # noqa: E402
from labkit.errors import one_line_errors  # noqa: E402
from labkit.model import LabModel, attention_impl  # noqa: E402
from labkit.parallel import (  # noqa: E402
    Dist,
    Parallel,
    choose_strategy,
    compile_wanted,
    keep_freed_memory_on_cpu,
)
from labkit.resources import configs_dir  # noqa: E402
from labkit.run import StopSignals, resolve_config  # noqa: E402
from labkit.training import (  # noqa: E402
    ClaimedRunDir,
    TrainingData,
    TrainingSession,
    claim_run_dir,
    prepare_data,
)

DEFAULT_CONFIG = configs_dir() / "demo.toml"


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
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value")  # fmt: skip
    p.add_argument("--run-dir", help="run directory (default: runs/<name>-<timestamp>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir under its pinned config (a new run if it is empty)",
    )
    p.add_argument("--lock-wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another trainer to release the run dir "
                        "(default: fail at once)")  # fmt: skip
    p.add_argument(
        "--trust-unverified",
        action="store_true",
        help="accept checkpoints without checksums (written by older labkits)",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one line")
    return p.parse_args(argv)


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
    groups = [
        {"params": decay, "weight_decay": t.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    opts = [torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), **fused)]
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


class Trainer:
    """config -> data -> model -> optimizer -> `fit` (the loop). `loss` is the objective."""

    def __init__(self, claimed: ClaimedRunDir, data_set: TrainingData, d: Dist, stop: StopSignals):
        self.stop, self.d = stop, d
        self.cfg = cfg = claimed.cfg
        t, data_dir = cfg.train, data_set.path
        data = MixedData(data_dir, cfg.data.mix, t.tokens, cfg.seed)
        tokenizer = data.manifest["tokenizer"]
        mcfg = cfg.model_config(tokenizer["vocab_size"], tokenizer["eot_id"])
        self.loader = Loader(data, d.rank, d.world, t.micro_batch, bos=mcfg.bos_token_id)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = LabModel(mcfg).to(d.device)
        strategy = choose_strategy(cfg.parallel.strategy, mcfg.num_params(), d.world, t.optimizer)
        compiled = compile_wanted(t.compile, d.device, t.precision)
        if d.device.type == "cpu":
            keep_freed_memory_on_cpu()
        self.par = Parallel(self.model, strategy, d, compile=compiled)
        self.opts = build_optimizers(cfg, self.model)
        total_steps = math.ceil(t.tokens / t.batch_tokens)  # computed once, from the token target
        self.session = TrainingSession(claimed, d, par=self.par, optimizers=self.opts,
                                       loader=self.loader, data=data_set)  # fmt: skip
        self.state = self.session.start(total_steps)
        # Evaluation sets: fixed windows of each held-out split, at the base sequence length.
        splits = cfg.data.eval_splits or sorted(data.manifest["shards"]["eval"])
        self.eval_sets = {
            s: torch.from_numpy(
                eval_windows(data_dir, s, cfg.eval.tokens_per_split, t.seq_len, mcfg.bos_token_id)
            )
            for s in splits
        }
        bf16 = t.precision == "bf16"
        self.amp = torch.autocast(d.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """The training objective of one micro-batch [b, seq + 1] (under autocast): next-token
        cross-entropy. Override this to add a term; the loop averages and logs what it returns."""
        return self.par.step_module(batch[:, :-1], targets=batch[:, 1:], return_type="loss")

    def seq_len_at(self, tokens: int) -> int:
        return [s for start, s in self.cfg.seq_lens() if tokens >= start][-1]

    def accum_for(self, seq: int) -> int:
        """Micro-batches per step that reach the target token batch at this sequence length."""
        t = self.cfg.train
        return max(1, round(t.batch_tokens / (t.micro_batch * seq * self.d.world)))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean next-token loss on each held-out split (ranks share the windows)."""
        d, mb = self.d, self.cfg.train.micro_batch
        self.model.eval()
        out = {}
        for split, windows in self.eval_sets.items():
            total = torch.zeros(2, dtype=torch.float64, device=d.device)
            for i in range(d.rank * mb, len(windows), d.world * mb):
                batch = windows[i : i + mb].to(d.device)
                with self.amp:
                    loss = self.model(batch[:, :-1], targets=batch[:, 1:], return_type="loss")
                n = batch[:, 1:].numel()
                total += torch.tensor([loss.item() * n, n], dtype=torch.float64, device=d.device)
            total = d.sum(total)
            out[split] = (total[0] / total[1]).item()
        self.model.train()
        return out

    def announce(self) -> None:
        t, d, mcfg, state = self.cfg.train, self.d, self.model.cfg, self.state
        seq = self.seq_len_at(state.tokens)
        accum = self.accum_for(seq)
        if d.main:
            print(
                f"{mcfg.name}: {mcfg.num_params():,} parameters, {mcfg.attention.upper()} "
                f"attention through {attention_impl(mcfg, d.device)}, {self.par.strategy} on "
                f"{d.world} x {d.device.type}, "
                f"{'compiled' if self.par.compiled is not None else 'eager'} step; "
                f"{state.total_steps} steps of {accum} x "
                f"{t.micro_batch} x {seq} x {d.world} = {accum * t.micro_batch * seq * d.world:,}"
                f" tokens (target {t.batch_tokens:,}); run dir {self.session.path}"
            )
            line, warning = passes_report(self.loader.data.passes)
            print(line + (f"\nwarning: {warning}" if warning else ""))

    def set_lr(self, step: int, total_steps: int) -> float:
        t = self.cfg.train
        lr = t.lr * lr_factor(step, total_steps, t.warmup_steps, t.min_lr_ratio)
        for opt in self.opts:
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * lr / t.lr
        return lr

    def fit(self) -> dict:
        """The loop: micro-batches under autocast, backward, clip, step, LR; the session logs,
        evaluates, checkpoints and stops."""
        cfg, t, d, run, state = self.cfg, self.cfg.train, self.d, self.session, self.state
        self.announce()
        bar = tqdm(total=state.total_steps, initial=state.step, desc="train",
                   disable=not d.main, dynamic_ncols=True)  # fmt: skip
        window_t, window_tokens, stopping = time.time(), 0, False
        compiled_for: set[int] = set()  # sequence lengths the compiled step has been built for
        run.initial_milestone(state)
        self.model.train()
        while state.step < state.total_steps:
            if stopping:  # a signal reached some rank during the last step: save, then leave
                break
            run.debug_kill(state.step)
            seq = self.seq_len_at(state.tokens)
            accum = self.accum_for(seq)
            state.lr = self.set_lr(state.step, state.total_steps)
            compiling = self.par.compiled is not None and seq not in compiled_for
            step_t = time.time()

            loss_sum = torch.zeros((), device=d.device)
            for micro in range(accum):
                windows = self.loader.next_batch(seq, state.tokens)
                batch = torch.from_numpy(windows).to(d.device, non_blocking=True)
                with self.par.micro_batch(last=micro == accum - 1):
                    with self.amp:
                        loss = self.loss(batch)
                    if state.step + 1 in cfg.debug.nan_at_steps:
                        loss = loss * float("nan")
                    (loss / accum).backward()
                loss_sum += loss.detach() / accum
            step_tokens = accum * t.micro_batch * seq * d.world
            # one all-reduce carries the loss and whether any rank was asked to stop
            flag = torch.tensor(float(self.stop.signum), device=d.device)
            reduced = d.sum(torch.stack([loss_sum, flag.to(loss_sum.dtype)]))
            loss_avg = reduced[0].item() / d.world
            stopping = reduced[1].item() > 0
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            grad_norm = float(
                grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            )
            if compiling:  # the first step at this length traced and compiled the model
                compiled_for.add(seq)
                run.compiled(seq, time.time() - step_t)
            tokens_before = state.tokens
            state.tokens += step_tokens
            state.step += 1
            if not (math.isfinite(loss_avg) and math.isfinite(grad_norm)):
                for opt in self.opts:
                    opt.zero_grad(set_to_none=True)
                run.skip_step(state, loss_avg, grad_norm)  # raises after train.max_bad_steps
                continue
            state.bad_run = 0
            for opt in self.opts:
                opt.step()
                opt.zero_grad(set_to_none=True)
            state.last_loss = loss_avg
            window_tokens += step_tokens
            bar.update(1)

            if state.step % cfg.log.every_steps == 0 or state.step == state.total_steps:
                tps = window_tokens / max(time.time() - window_t, 1e-9)
                run.log_step(state, loss_avg, grad_norm, tps, seq, step_tokens)
                bar.set_postfix(loss=f"{loss_avg:.3f}", lr=f"{state.lr:.2e}", tok_s=f"{tps:,.0f}")
                window_t, window_tokens = time.time(), 0
            if state.step % cfg.eval.every_steps == 0 or state.step == state.total_steps:
                run.evaluated(state, self.evaluate(), loss_avg)
            run.checkpoint(state, tokens_before)
        bar.close()
        if stopping and state.step < state.total_steps:
            return run.stopped(self.stop.signum or signal.SIGTERM, state)
        return run.finish(state)


def train(cfg: TrainConfig, args: argparse.Namespace, trainer: type[Trainer] = Trainer) -> dict:
    """Ensure the data set, claim the run directory (rank 0 locks it), build the trainer, run
    the loop, release the directory."""
    stop = StopSignals()
    d = Dist(cfg.parallel.backend, cfg.parallel.timeout_s)
    claimed = claim_run_dir(
        cfg, d, run_dir=args.run_dir, resume=args.resume, lock_wait=args.lock_wait,
        config=args.config, sets=args.set, default_config=DEFAULT_CONFIG, root=REPO,
    )  # fmt: skip
    try:
        if claimed.finished is not None:  # `--resume` of a finished run: say so, touch nothing
            if d.main:
                print(claimed.finished_line())
            d.close()
            return {}
        data_set = prepare_data(claimed.cfg, d, REPO)
        return trainer(claimed, data_set, d, stop).fit()
    finally:
        claimed.close()


def main(argv: list[str] | None = None, trainer: type[Trainer] = Trainer) -> int:
    args = parse_args(argv)
    if args.trust_unverified:
        os.environ["LABKIT_TRUST_UNVERIFIED"] = "1"

    def start() -> int:
        # Each rank reads the config itself (the pinned one on --resume) to join the group;
        # rank 0 settles it again under the run dir's lock.
        run_path = Path(args.run_dir) if args.run_dir and args.resume else None
        cfg, _ = resolve_config(run_path, args.config, args.set, DEFAULT_CONFIG)
        return train(cfg, args, trainer).get("stopped", 0)

    return one_line_errors("pretrain/run.py", start, args.debug)


if __name__ == "__main__":
    sys.exit(main())
