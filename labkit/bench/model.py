"""Training throughput of LabModel against `transformers` at the same config, and the cost of idle
hook points.

    python -m labkit.bench.model [--presets tiny-mla,tiny-gqa,small-mla,small-gqa] [--record]

For each preset: tokens/s of forward + backward + AdamW for (a) LabModel, (b) the same weights
exported and loaded as `transformers`' LlamaForCausalLM / DeepseekV3ForCausalLM (SDPA attention),
(c) LabModel with hook points compiled out. On the CPU all run under bf16 autocast with fp32 master
weights (a 2-core CPU of this project multiplies bf16 ~5.5x faster than fp32). Targets: LabModel >= 1.0x
transformers; idle-hook overhead <= 3 %.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from labkit.bench.common import interleaved_timing, machine, record
from labkit.config import ModelConfig
from labkit.export import to_hf
from labkit.model import LabModel


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn, autocast) -> None:
    with autocast():
        loss = loss_fn(model)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def idle_hook_cost_per_call(calls: int = 200_000) -> float:
    """Seconds per call of an idle HookPoint, minus a plain function call (what compiled-out hooks
    cost). A direct figure: the A/B step timing below is noisier than the effect it measures."""
    from transformer_lens.hook_points import HookPoint

    hook, x = HookPoint(), torch.zeros(1)

    def plain(t):
        return t

    def loop(fn) -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(x)
        return time.perf_counter() - t0

    loop(hook), loop(plain)  # warm up
    return max(
        0.0, (min(loop(hook) for _ in range(3)) - min(loop(plain) for _ in range(3))) / calls
    )


def bench_preset(
    name: str, batch: int, seq: int, rounds: int, steps: int, stat: str = "min"
) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    cfg = ModelConfig.preset(name).replace(max_seq_len=max(seq, 8))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16

    def autocast():
        return torch.autocast(device, dtype=dtype)

    torch.manual_seed(0)
    ours = LabModel(cfg).to(device)
    bare = LabModel(cfg, hook_points=False).to(device)
    bare.load_state_dict(ours.state_dict())
    twin = LabModel(cfg).to(device)  # A/A control: an identical copy shows the noise floor
    twin.load_state_dict(ours.state_dict())
    with tempfile.TemporaryDirectory() as out:
        to_hf(ours, out)
        theirs = AutoModelForCausalLM.from_pretrained(
            out, dtype=torch.float32, attn_implementation="sdpa"
        ).to(device)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)

    def make(model, loss_fn):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
        model.train()
        return lambda: _train_step(model, opt, loss_fn, autocast)

    candidates = {
        "labkit": make(ours, lambda m: m(tokens, return_type="loss")),
        "transformers": make(theirs, lambda m: m(input_ids=tokens, labels=tokens).loss),
        "labkit_no_hooks": make(bare, lambda m: m(tokens, return_type="loss")),
        "labkit_copy": make(twin, lambda m: m(tokens, return_type="loss")),
    }
    seconds = interleaved_timing(candidates, rounds=rounds, steps=steps, stat=stat)
    result = {k: batch * seq / v for k, v in seconds.items()}
    result["step_s"] = seconds["labkit"]
    result["hook_calls"] = len(ours.hook_dict)  # each hook point fires once per forward
    return result


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny-mla,tiny-gqa,small-mla,small-gqa")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--stat", choices=["min", "median"], default="min")
    parser.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)

    print(f"machine: {machine()}")
    results: dict[str, dict[str, float]] = {}
    lines = [
        f"Training step (forward + backward + AdamW), batch {args.batch} x {args.seq} tokens, "
        f"bf16 autocast, fp32 master weights; {args.stat} of {args.rounds} interleaved rounds of "
        f"{args.steps} steps.",
        "",
        "| preset | labkit tok/s | transformers tok/s | labkit / transformers | "
        "no-hooks tok/s | idle hooks, A/B | A/A noise | idle hooks, direct |",
        "|---|---|---|---|---|---|---|---|",
    ]
    per_call = idle_hook_cost_per_call()
    for name in args.presets.split(","):
        r = bench_preset(name, args.batch, args.seq, args.rounds, args.steps, args.stat)
        results[name] = r
        ratio = r["labkit"] / r["transformers"]
        overhead = r["labkit_no_hooks"] / r["labkit"] - 1
        direct = per_call * r["hook_calls"] / r["step_s"]
        noise = r["labkit_copy"] / r["labkit"] - 1
        line = (
            f"| {name} | {r['labkit']:,.0f} | {r['transformers']:,.0f} | {ratio:.2f}x | "
            f"{r['labkit_no_hooks']:,.0f} | {100 * overhead:+.1f} % | {100 * noise:+.1f} % | "
            f"{100 * direct:.3f} % |"
        )
        lines.append(line)
        print(line, flush=True)
    lines.append("")
    lines.append(
        f"Idle hooks, A/B: no-hooks tok/s / labkit tok/s - 1. A/A noise: the same for an "
        f"identical copy of the hooked model, i.e. what the A/B figure can resolve. Idle hooks, "
        f"direct: {1e6 * per_call:.2f} us per idle HookPoint call (over a plain function "
        f"call) x hook points per step / step time."
    )
    lines.append("Targets: labkit / transformers >= 1.0x; idle-hook overhead <= 3 %.")
    table = "\n".join(lines)
    print(table)
    if args.record:
        record(
            "labkit.bench.model",
            f"`python -m labkit.bench.model {' '.join(argv or [])}`\n\n{table}",
        )
    return results


if __name__ == "__main__":
    main()
