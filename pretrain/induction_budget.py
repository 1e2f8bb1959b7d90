"""How many optimizer steps does a tiny model need to form an induction head when copying is the
*only* thing its data teaches? The miniature study's calibration for its negative induction result.

    python pretrain/induction_budget.py [--steps 1000] [--every 50] [--figures figures]

Trains the study's `tiny-mla` (its init, optimizer, clipping, bf16 autocast and token batch of
2,048) on sequences of blocks [r, r] of random tokens of random lengths (`repeated_segments`: half
of every block can be predicted only by copying, and only by finding the earlier occurrence by
content, not at a fixed distance), on a 2 x 2 grid of vocabulary size (1,024 and the study's
4,096) and context length (64 and the study's 256), at a constant learning rate. Every `--every`
steps it scores held-out repeated random tokens as notebook 02 does (head_detector semantics,
threshold 0.3) and writes, per grid cell, the step of the first crossing (null if none within
`--steps`), the best score and the copy-loss drop to `induction_budget` in
figures/results.json, which `make figures` keeps. About 15-20 CPU-minutes on one core.

The study's own data are natural text in which copying is one signal among many; if these
copy-only runs need most of the study's 1,000 steps (or more) at its vocabulary and context,
induction heads cannot be expected from the study's budget.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from labkit.analysis.induction import (  # noqa: E402
    repeated_random_tokens,
    repeated_segments,
    repeated_tokens_test,
)
from labkit.config import ModelConfig, TrainConfig  # noqa: E402
from labkit.figures import save_results  # noqa: E402
from labkit.model import LabModel  # noqa: E402

STUDY_CONFIG = REPO / "pretrain" / "configs" / "paper-mini" / "cpu.toml"
GRID = [(1024, 64), (1024, 256), (4096, 64), (4096, 256)]  # (vocabulary, context length)
THRESHOLD = 0.3


def copy_only_run(vocab: int, seq_len: int, steps: int, every: int, seed: int = 0) -> dict:
    """Train on [r, r] sequences of random tokens; score held-out ones every `every` steps."""
    study = TrainConfig.load(STUDY_CONFIG)
    torch.manual_seed(seed)
    cfg = ModelConfig.preset(study.model["preset"]).replace(
        init_std=study.model["init_std"], vocab_size=vocab, max_seq_len=seq_len
    )
    model = LabModel(cfg)
    t = study.train
    opt = torch.optim.AdamW(
        model.parameters(), lr=t.lr, weight_decay=t.weight_decay, betas=(t.beta1, t.beta2)
    )
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if t.precision == "bf16" else nullcontext()
    batch, half = t.batch_tokens // seq_len, seq_len // 2
    held_out = repeated_random_tokens(vocab, half, batch=16, seed=seed + 1)
    g = torch.Generator().manual_seed(seed)
    curve, crossing = [], None
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            model.eval()
            rep = repeated_tokens_test(model, held_out, half)
            score = float(rep.induction_score.max())
            curve.append([step, round(score, 4), round(rep.loss_first - rep.loss_second, 3)])
            if crossing is None and score >= THRESHOLD:
                crossing = step
            model.train()
        if step == steps:
            break
        x = repeated_segments(vocab, seq_len + 1, batch, g)
        with amp:
            loss = model(x[:, :-1], targets=x[:, 1:], return_type="loss")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {
        "vocab_size": vocab,
        "seq_len": seq_len,
        "batch": batch,
        "crossing_step": crossing,
        "max_score": max(c[1] for c in curve),
        "final_copy_loss_drop": curve[-1][2],
        "curve": curve,  # [step, best head's score, first-copy minus second-copy loss]
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per grid cell")
    p.add_argument("--every", type=int, default=50, help="score every this many steps")
    p.add_argument("--figures", default=str(REPO / "figures"), help="where results.json lives")
    args = p.parse_args(argv)
    if args.steps < 1 or args.every < 1:
        p.error("--steps and --every must be >= 1")
    torch.set_num_threads(1)
    cells = {}
    for vocab, seq_len in GRID:
        start = time.time()
        cell = copy_only_run(vocab, seq_len, args.steps, args.every)
        cells[f"vocab{vocab}_ctx{seq_len}"] = cell
        print(
            f"vocab {vocab:5d} context {seq_len:3d}: crossing at step {cell['crossing_step']}, "
            f"best score {cell['max_score']:.3f}, copy-loss drop {cell['final_copy_loss_drop']:.2f}"
            f" ({time.time() - start:.0f} s)",
            flush=True,
        )
    save_results(
        args.figures,
        "induction_budget",
        {"steps": args.steps, "threshold": THRESHOLD, "token_batch": 2048, "cells": cells},
    )
    print(f"wrote induction_budget to {Path(args.figures) / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
