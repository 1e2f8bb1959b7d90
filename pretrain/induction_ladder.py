"""The induction calibration ladder: under which conditions does this model form an induction
head, in minutes of CPU rather than a whole study?

    python pretrain/induction_ladder.py [--steps a|b|all] [--train-steps 6000] [--figures figures]
                                        [--name KEY]

Each rung trains the study's model (pretrain/configs/paper-mini/cpu.toml: its preset, depth,
init, optimizer, clipping, bf16 autocast and token batch) for MLA and GQA side by side
(one process and one core each) at context 64, every window starting with the attention sink
(the data set's first token, as `data.bos` trains the study):

- (a) copy only: blocks [r, r] of random tokens whose lengths vary (`repeated_segments`), so the
  second half of every block can be predicted only by finding the earlier occurrence by content;
- (b) the same copy blocks in half of every batch, the study's corpus (its dense mix) in the
  other half: copying as one signal among many.

(c) is the study itself (`make paper`; notebook 02 writes `induction` to results.json). Every
`--every` steps a rung scores held-out repeated random tokens (the second-copy score and
TransformerLens's detect_head score, the copy-loss drop) and, for (b), the loss on held-out
text; at the end it names the mechanism (`induction_mechanism`: the best head of a layer >= 1,
the previous-token head before it, the share of the copy-loss drop that mean-ablating it
removes). Results go to `induction_ladder.<rung>.<attention>` in figures/results.json, which
`make figures` keeps.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from labkit.figures import check_results_dir, load_results, save_results  # noqa: E402

STUDY_CONFIG = REPO / "pretrain" / "configs" / "paper-mini" / "cpu.toml"
RUNGS = {"a": "copy only", "b": "copy blocks + the corpus"}
THRESHOLD = 0.3


def train_rung(
    rung: str, attention: str, steps: int, every: int, ctx: int, config: Path, data_dir: Path,
    seed: int = 0,
) -> dict:  # fmt: skip
    """Train one rung for one attention kind with `config`'s model and optimizer on `data_dir`'s
    tokenizer (and corpus, for rung b); the curve, the crossing and the mechanism."""
    import numpy as np
    import torch

    from labkit.analysis.induction import (
        induction_mechanism,
        repeated_random_tokens,
        repeated_segments,
        repeated_tokens_test,
        uniform_second_copy_score,
        uniform_tl_score,
    )
    from labkit.config import ModelConfig, TrainConfig
    from labkit.data.loader import MixedData, Position, eval_windows
    from labkit.model import LabModel

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    study = TrainConfig.load(config, [f"model.preset=tiny-{attention}"])
    t = study.train
    data = None
    if rung == "b":
        data = MixedData(data_dir, study.data.mix, steps * t.batch_tokens, seed)
    bos, vocab = _sink_and_vocab(data_dir)
    overrides = {k: v for k, v in study.model.items() if k != "preset"}
    cfg = ModelConfig.preset(f"tiny-{attention}").replace(
        **overrides, vocab_size=vocab, max_seq_len=ctx, bos_token_id=bos
    )
    print(f"({rung}) {attention}: {cfg.n_layers} layers, d_model {cfg.d_model}, context {ctx}, "
          f"{steps} steps of {t.batch_tokens} tokens", flush=True)  # fmt: skip
    model = LabModel(cfg)
    opt = torch.optim.AdamW(
        model.parameters(), lr=t.lr, weight_decay=t.weight_decay, betas=(t.beta1, t.beta2)
    )
    amp = torch.autocast("cpu", dtype=torch.bfloat16)
    batch = t.batch_tokens // ctx
    n_copy = batch if rung == "a" else batch // 2
    half = (ctx - 1) // 2
    scoring = repeated_random_tokens(vocab, half, batch=16, seed=seed + 1, bos=bos)
    held_text = None
    if rung == "b":
        held = eval_windows(data_dir, "general", 16 * ctx, ctx, bos=bos)
        held_text = torch.from_numpy(held.astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    position, seen, curve, crossing = Position(), 0, [], None
    began = time.time()
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            model.eval()
            rep = repeated_tokens_test(model, scoring, half)
            best = int(rep.second_copy_score.argmax())
            row = {
                "step": step,
                "second_copy": round(float(rep.second_copy_score.max()), 4),
                # [layer, head]: a layer-0 head can only attend by position, not by content
                "best_head": list(divmod(best, rep.second_copy_score.shape[1])),
                "tl": round(float(rep.tl_score.max()), 4),
                "copy_loss_drop": round(rep.loss_first - rep.loss_second, 3),
            }
            if held_text is not None:
                with torch.no_grad():
                    loss = model(held_text[:, :-1], targets=held_text[:, 1:], return_type="loss")
                    row["text_loss"] = round(float(loss), 3)
            curve.append(row)
            if crossing is None and row["second_copy"] >= THRESHOLD:
                crossing = step
            print(f"({rung}) {attention} {row} {time.time() - began:.0f}s", flush=True)
            model.train()
        if step == steps:
            break
        lr = t.lr * min(1.0, (step + 1) / max(1, t.warmup_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        copies = repeated_segments(vocab, ctx, n_copy, g)
        parts = [torch.cat([torch.full((n_copy, 1), bos), copies], 1)]
        if data is not None:
            stage = data.stage_at(seen)
            if stage != position.stage:
                position = Position(stage, 0)
            text = data.windows(position, 0, batch - n_copy, ctx, bos)
            position.offset += (batch - n_copy) * ctx
            parts.append(torch.from_numpy(text.astype(np.int64)))
        x = torch.cat(parts)
        seen += t.batch_tokens
        with amp:
            loss = model(x[:, :-1], targets=x[:, 1:], return_type="loss")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    mechanism_tokens = repeated_random_tokens(vocab, half, batch=64, seed=seed + 2, bos=bos)
    return {
        "rung": RUNGS[rung],
        "attention": attention,
        "context": ctx,
        "token_batch": t.batch_tokens,
        "copy_share": n_copy / batch,
        "steps": steps,
        "crossing_step": crossing,
        "max_score": max(r["second_copy"] for r in curve),
        "tl_max_score": max(r["tl"] for r in curve),
        "uniform_score": uniform_second_copy_score(half, 1),
        "tl_uniform_score": uniform_tl_score(half, 1),
        "copy_loss_drop": curve[-1]["copy_loss_drop"],
        "curve": curve,
        "mechanism": induction_mechanism(model, mechanism_tokens, half),
        "minutes": round((time.time() - began) / 60, 1),  # wall time, one thread
    }


def _sink_and_vocab(data_dir: Path) -> tuple[int, int]:
    """The study's first token (the data set's end-of-text id, as data.bos uses) and vocabulary."""
    from labkit.data.build import load_manifest

    tokenizer = load_manifest(data_dir)["tokenizer"]
    return int(tokenizer["eot_id"]), int(tokenizer["vocab_size"])


def _run(job: tuple) -> dict:
    return train_rung(*job)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default="all", choices=[*RUNGS, "all"], help="which rung(s)")
    p.add_argument("--train-steps", type=int, default=6000, help="optimizer steps per run")
    p.add_argument("--every", type=int, default=250, help="score every this many steps")
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--attention", nargs="+", default=["mla", "gqa"], choices=["mla", "gqa"])
    p.add_argument("--figures", default=str(REPO / "figures"), help="where results.json lives")
    p.add_argument("--name", help="the key of a single rung's result (default: its letter), e.g. "
                   "a_long for rung a with more --train-steps, kept beside a")  # fmt: skip
    p.add_argument("--data", help="data set directory (default: the config's, built if missing)")
    p.add_argument("--config", default=str(STUDY_CONFIG),
                   help="the training config whose model and optimizer are calibrated")  # fmt: skip
    args = p.parse_args(argv)
    if args.train_steps < 1 or args.every < 1 or args.context < 8:
        p.error("--train-steps and --every must be >= 1, --context >= 8")
    try:
        check_results_dir(args.figures)
    except ValueError as e:
        p.error(f"--figures {e}")
    from labkit.config import TrainConfig

    if args.data:
        data_dir = Path(args.data)
        if not (data_dir / "manifest.json").exists():
            p.error(f"--data {data_dir}: no data set there (labkit data build CONFIG {data_dir})")
    else:
        from paper import ensure_data

        ensure_data({"config": args.config})  # built once, before the pool
        data_dir = Path(TrainConfig.load(args.config).data.dir)
        data_dir = data_dir if data_dir.is_absolute() else REPO / data_dir
    rungs = list(RUNGS) if args.steps == "all" else [args.steps]
    if args.name and len(rungs) > 1:
        p.error("--name names one rung: give --steps a or --steps b")
    section = load_results(args.figures).get("induction_ladder", {})
    for rung in rungs:
        jobs = [(rung, a, args.train_steps, args.every, args.context, Path(args.config), data_dir)
                for a in args.attention]  # fmt: skip
        with mp.get_context("spawn").Pool(min(2, len(jobs))) as pool:
            results = pool.map(_run, jobs)
        section[args.name or rung] = {r["attention"]: r for r in results}
        save_results(args.figures, "induction_ladder", section)  # each rung kept as it lands
        for r in results:
            m = r["mechanism"]
            print(f"({rung}) {r['attention']}: best second-copy score {r['max_score']:.3f} "
                  f"(uniform {r['uniform_score']:.3f}), crossing at step {r['crossing_step']}, "
                  f"copy-loss drop {r['copy_loss_drop']:.2f}; head L{m['head'][0]}H{m['head'][1]}"
                  f" ablation removes {m['ablation_fraction']:.0%} of the drop")  # fmt: skip
    print(f"wrote induction_ladder to {Path(args.figures) / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
