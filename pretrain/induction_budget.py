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
figures/results.json, which `make figures` keeps.

The same runs with a textbook decoder in place of labkit's model -- transformers' GPT-2 (learned
absolute positions, LayerNorm, GELU MLP, full multi-head attention) at tiny-mla's width, depth,
heads and MLP size, with the same init scale, optimizer and data -- on the grid's most favourable
cell and on the study's (`reference_cells`): if it forms no induction head either, the slow
formation is the phenomenon's at this budget, not a fault of MLA, of RoPE or of labkit's code.
Its wall time on one core is recorded as `minutes`.

The study's own data are natural text in which copying is one signal among many; if these
copy-only runs need most of the study's 1,000 steps (or more) at its vocabulary and context,
induction heads cannot be expected from the study's budget.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
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
from labkit.figures import check_results_dir, save_results  # noqa: E402
from labkit.model import LabModel  # noqa: E402

STUDY_CONFIG = REPO / "pretrain" / "configs" / "paper-mini" / "cpu.toml"
GRID = [(1024, 64), (1024, 256), (4096, 64), (4096, 256)]  # (vocabulary, context length)
REFERENCE_GRID = [(1024, 64), (4096, 256)]  # GPT-2 where labkit's model came closest; the study's
THRESHOLD = 0.3


class GPT2Reference(torch.nn.Module):
    """transformers' GPT-2 (randomly initialised, no dropout) shaped like `cfg`, answering the two
    calls labkit's induction test makes: logits from `model(tokens)`, and attention patterns
    under labkit's hook names from `run_with_cache`."""

    def __init__(self, cfg: ModelConfig, n_ctx: int) -> None:
        from transformers import GPT2Config, GPT2LMHeadModel

        super().__init__()
        config = GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=n_ctx, n_embd=cfg.d_model,
            n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff,
            initializer_range=cfg.init_std, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            tie_word_embeddings=cfg.tie_embeddings, bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        config._attn_implementation = "eager"  # only eager attention returns its patterns
        self.gpt2 = GPT2LMHeadModel(config)

    def forward(self, tokens: torch.Tensor, targets=None, return_type: str = "logits"):
        """LabModel's call: logits, or with `targets` and return_type="loss" the mean next-token
        cross-entropy (computed in fp32)."""
        logits = self.gpt2(tokens).logits
        if return_type != "loss":
            return logits
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    def run_with_cache(self, tokens: torch.Tensor, names_filter=None):
        out = self.gpt2(tokens, output_attentions=True)
        cache = {f"blocks.{i}.attn.hook_pattern": a for i, a in enumerate(out.attentions)}
        keep = names_filter or (lambda name: True)
        return out.logits, {k: v for k, v in cache.items() if keep(k)}


def copy_only_run(
    study: TrainConfig,
    vocab: int,
    seq_len: int,
    steps: int,
    every: int,
    seed: int = 0,
    preset: str | None = None,
    make_model: Callable[[ModelConfig], torch.nn.Module] | None = None,
) -> dict:
    """Train on [r, r] sequences of random tokens with the `study` config's model (or `preset`),
    init and optimizer; score held-out ones every `every` steps. `make_model`: another model built
    from the config instead of LabModel (the GPT-2 reference, pretrain/mla_copy_ablation.py's MLA
    variants)."""
    torch.manual_seed(seed)
    cfg = ModelConfig.preset(preset or study.model["preset"]).replace(
        init_std=study.model["init_std"], vocab_size=vocab, max_seq_len=seq_len
    )
    model = (make_model or LabModel)(cfg)
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
        "model": "transformers GPT-2" if isinstance(model, GPT2Reference) else cfg.name,
        "vocab_size": vocab,
        "seq_len": seq_len,
        "batch": batch,
        "crossing_step": crossing,
        "max_score": max(c[1] for c in curve),
        "final_copy_loss_drop": curve[-1][2],
        "curve": curve,  # [step, best head's score, first-copy minus second-copy loss]
    }


def parse_checked(
    p: argparse.ArgumentParser, argv: list[str] | None
) -> tuple[argparse.Namespace, TrainConfig]:
    """The arguments, with --steps, --every and --figures checked before the training rather than
    when its results are written (exit 2 with one line), and the study's config; one thread."""
    args = p.parse_args(argv)
    if args.steps < 1 or args.every < 1:
        p.error("--steps and --every must be >= 1")
    try:
        check_results_dir(args.figures)
    except ValueError as e:
        p.error(f"--figures {e}")
    torch.set_num_threads(1)
    return args, TrainConfig.load(STUDY_CONFIG)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per grid cell")
    p.add_argument("--every", type=int, default=50, help="score every this many steps")
    p.add_argument("--figures", default=str(REPO / "figures"), help="where results.json lives")
    args, study = parse_checked(p, argv)
    began = time.time()
    cells: dict[str, dict[str, dict]] = {"cells": {}, "reference_cells": {}}
    runs = [(v, s, False) for v, s in GRID] + [(v, s, True) for v, s in REFERENCE_GRID]
    for vocab, seq_len, reference in runs:
        start = time.time()
        gpt2 = (lambda cfg, n=seq_len + 1: GPT2Reference(cfg, n_ctx=n)) if reference else None
        cell = copy_only_run(study, vocab, seq_len, args.steps, args.every, make_model=gpt2)
        cells["reference_cells" if reference else "cells"][f"vocab{vocab}_ctx{seq_len}"] = cell
        print(
            f"{cell['model']:>18} vocab {vocab:5d} context {seq_len:3d}: crossing at step "
            f"{cell['crossing_step']}, best score {cell['max_score']:.3f}, copy-loss drop "
            f"{cell['final_copy_loss_drop']:.2f} ({time.time() - start:.0f} s)",
            flush=True,
        )
    save_results(
        args.figures,
        "induction_budget",
        {
            "steps": args.steps,
            "threshold": THRESHOLD,
            "token_batch": study.train.batch_tokens,
            "minutes": round((time.time() - began) / 60, 1),  # wall time, one thread
            **cells,
        },
    )
    print(f"wrote induction_budget to {Path(args.figures) / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
