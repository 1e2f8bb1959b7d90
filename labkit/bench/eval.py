"""Evaluation speed on this machine: loglikelihood requests per second of the `labkit` lm-eval
adapter against lm-eval's own `hf` model on the same checkpoint exported to Hugging Face format,
on the same requests (the multiple-choice and last-word requests of the offline suite), the same
precision (fp32) and batch size, interleaved rounds. Target: >= 1.5x.

    python -m labkit.bench.eval [--checkpoint DIR] [--requests 400] [--record]

Without --checkpoint, the final milestone of the miniature study's MLA run (`make paper`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from lm_eval.api.instance import Instance

from labkit.bench.common import ROOT, command_line, interleaved_timing, machine, record


def _requests(tasks_dir: Path, n: int, fewshot: int = 0) -> list[Instance]:
    """(context, continuation) pairs of the suite's loglikelihood tasks, round robin over tasks.
    With `fewshot` k, each context follows the k questions before it in its task, each with
    its gold answer (lm-eval's `num_fewshot`): longer contexts shared by every choice."""
    per_task = []
    for name in ("labkit_completion", "labkit_hellaswag", "labkit_qa", "labkit_siqa",
                 "labkit_association", "labkit_piqa", "labkit_lambada"):  # fmt: skip
        rows = [json.loads(x) for x in (tasks_dir / f"{name}.jsonl").read_text().splitlines()]
        pairs, shots = [], []
        for r in rows:
            context = "\n\n".join([*shots[-fewshot:], r["context"]]) if fewshot else r["context"]
            if "choices" in r:
                pairs += [(context, " " + c) for c in r["choices"]]
                gold = r["choices"][r["label"]]
            else:
                pairs.append((context, " " + r["target"]))
                gold = r["target"]
            shots.append(f"{r['context']} {gold}")
        per_task.append(pairs)
    mixed = [p for group in zip(*per_task, strict=False) for p in group][:n]
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(mixed)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a milestone directory (default: see above)")
    parser.add_argument("--data", default=str(ROOT / "data" / "demo"), help="suite source")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fewshot", type=int, default=0, help="earlier questions per context")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    if args.fewshot < 0:
        parser.error(f"--fewshot must be >= 0, got {args.fewshot}")
    from lm_eval.models.huggingface import HFLM

    from labkit.eval.adapter import LabkitLM, checkpoint_tokenizer
    from labkit.eval.tasks import build_tasks
    from labkit.export import to_hf
    from labkit.run import list_milestones

    print(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp(prefix="labkit-bench-eval-"))
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if checkpoint is None:
        demo = sorted((ROOT / "runs" / "paper-mini").glob("mla-dense"))
        found = list_milestones(demo[0]) if demo else []
        if not found:
            raise SystemExit("no checkpoint: pass --checkpoint or run `make paper` first")
        checkpoint = found[-1].path
    tasks_dir = build_tasks(args.data, tmp / "tasks")
    requests = _requests(tasks_dir, args.requests, args.fewshot)
    ours = LabkitLM(checkpoint=str(checkpoint), batch_size=args.batch_size)
    hf_dir = to_hf(ours.model, tmp / "hf", tokenizer=checkpoint_tokenizer(checkpoint))
    theirs = HFLM(pretrained=str(hf_dir), device="cpu", dtype="float32",
                  batch_size=args.batch_size, prefix_token_id=ours.eot_token_id)  # fmt: skip
    a = ours.loglikelihood(requests, disable_tqdm=True)
    b = theirs.loglikelihood(requests, disable_tqdm=True)
    gap = max(abs(x[0] - y[0]) for x, y in zip(a, b, strict=True))
    torch.set_num_threads(torch.get_num_threads())
    times = interleaved_timing(
        {"labkit": lambda: ours.loglikelihood(requests, disable_tqdm=True),
         "hf": lambda: theirs.loglikelihood(requests, disable_tqdm=True)},
        rounds=args.rounds, steps=1, warmup=1,
    )  # fmt: skip
    rate = {k: len(requests) / v for k, v in times.items()}
    table = "\n".join([
        f"Checkpoint `{checkpoint.relative_to(ROOT) if checkpoint.is_relative_to(ROOT) else checkpoint}` "
        f"({ours.model.cfg.attention.upper()}, {ours.model.cfg.num_params():,} parameters), "
        f"{len(requests)} loglikelihood requests of the offline suite"
        f"{f', each context after {args.fewshot} solved questions' if args.fewshot else ''}, batch {args.batch_size}, fp32, "
        f"min of {args.rounds} interleaved rounds:",
        "",
        "| model | requests/s |",
        "|---|---|",
        f"| lm-eval `labkit` adapter | {rate['labkit']:,.1f} |",
        f"| lm-eval `hf` (exported checkpoint) | {rate['hf']:,.1f} |",
        "",
        f"labkit / hf: {rate['labkit'] / rate['hf']:.2f}x (target >= 1.5x); largest loglikelihood "
        f"difference between the two: {gap:.2e}.",
    ])  # fmt: skip
    print(table)
    if args.record:
        record("labkit.bench.eval", f"{command_line('labkit.bench.eval', argv)}\n\n{table}")
    return rate


if __name__ == "__main__":
    main()
