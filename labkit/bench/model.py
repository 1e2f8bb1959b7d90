"""Training throughput of LabModel against `transformers` at the same config and precision, eager
and compiled, with MFU against this machine's measured matmul peak, and the cost of idle hook
points.

    python -m labkit.bench.model [--presets tiny-mla,tiny-gqa,small-mla,small-gqa] [--record]

For each preset, tokens/s of forward + backward + AdamW for: LabModel eager and under
`torch.compile` (the trainer's compiled step: forward with the loss, backward through AOTAutograd);
the same weights exported and loaded as `transformers`' LlamaForCausalLM / DeepseekV3ForCausalLM
(SDPA attention), eager and compiled; LabModel with hook points compiled out; and an identical
copy of LabModel (the A/A noise floor). All run under bf16 autocast with fp32 master weights, in
one process, their rounds interleaved. MFU = the model's training FLOPs per token x tokens/s over
the bf16 matmul peak measured here (a 2048 x 2048 product), not a datasheet. Targets: LabModel
compiled >= 1.5x transformers eager and >= 1.0x transformers compiled; idle hooks <= 3 %.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import torch

from labkit.bench.common import command_line, interleaved_timing, machine, record
from labkit.config import ModelConfig
from labkit.export import to_hf
from labkit.model import LabModel


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn, autocast) -> None:
    with autocast():
        loss = loss_fn(model)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def matmul_peak(dtype: torch.dtype = torch.bfloat16, n: int = 2048, rounds: int = 5) -> float:
    """FLOP/s of an n x n matrix product in `dtype` on this machine (the best of `rounds`)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(rounds):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / 4)
    return 2 * n**3 / best


def idle_hook_cost_per_call(calls: int = 200_000) -> tuple[float, float]:
    """(seconds per call of an idle HookPoint, seconds per `has_hooks()` check of one), each minus
    a plain function call: what compiled-out hooks save. A direct figure: the A/B step timing
    below is noisier than the effect it measures."""
    from transformer_lens.hook_points import HookPoint

    hook, x = HookPoint(), torch.zeros(1)

    def plain(t):
        return t

    def loop(fn) -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(x)
        return time.perf_counter() - t0

    def check(_):
        return hook.has_hooks()

    loop(hook), loop(plain), loop(check)  # warm up
    base = min(loop(plain) for _ in range(3))
    call = max(0.0, (min(loop(hook) for _ in range(3)) - base) / calls)
    return call, max(0.0, (min(loop(check) for _ in range(3)) - base) / calls)


def hook_points_touched(model: LabModel, tokens: torch.Tensor) -> tuple[int, int]:
    """(hook points that fire, `has_hooks()` checks) in one idle forward: what idle hooks cost per
    step (backward adds none). hook_scale and the attention pattern hooks are only checked while
    idle; TransformerLens's switched hook points (hook_result, the fork's inputs, hook_mlp_in)
    are not touched at all while their switch is off."""
    fired, checked = [], []
    points = list(model.hook_dict.values())
    handles = [hp.register_forward_hook(lambda *_: fired.append(1)) for hp in points]
    for hp in points:
        hp.has_hooks = lambda *a, _hp=hp, **k: (
            checked.append(1) or type(_hp).has_hooks(_hp, *a, **k)
        )
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for handle in handles:
            handle.remove()
        for hp in points:
            del hp.has_hooks
    return len(fired), len(checked)


def bench_preset(
    name: str, batch: int, seq: int, rounds: int, steps: int, stat: str = "min",
    compiled: bool = True,
) -> dict[str, float]:  # fmt: skip
    from transformers import AutoModelForCausalLM

    cfg = ModelConfig.preset(name).replace(max_seq_len=max(seq, 8))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16

    def autocast():
        return torch.autocast(device, dtype=dtype)

    def copy_of(model: LabModel, **kw) -> LabModel:
        twin = LabModel(cfg, **kw).to(device)
        twin.load_state_dict(model.state_dict())
        return twin

    def hf(model: LabModel):
        with tempfile.TemporaryDirectory() as out:
            to_hf(model, out)
            return AutoModelForCausalLM.from_pretrained(
                out, dtype=torch.float32, attn_implementation="sdpa"
            ).to(device)

    torch.manual_seed(0)
    ours = LabModel(cfg).to(device)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)

    def make(model, loss_fn):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
        model.train()
        return lambda: _train_step(model, opt, loss_fn, autocast)

    ours_loss = lambda m: m(tokens, return_type="loss")  # noqa: E731
    hf_loss = lambda m: m(input_ids=tokens, labels=tokens).loss  # noqa: E731
    candidates = {
        "labkit": make(ours, ours_loss),
        "transformers": make(hf(ours), hf_loss),
        "labkit_no_hooks": make(copy_of(ours, hook_points=False), ours_loss),
        "labkit_copy": make(copy_of(ours), ours_loss),
    }
    compile_s: dict[str, float] = {}
    if compiled:
        for key, model, loss in (("labkit_compiled", copy_of(ours), ours_loss),
                                 ("transformers_compiled", hf(ours), hf_loss)):  # fmt: skip
            step = make(torch.compile(model, dynamic=False), loss)
            t0 = time.perf_counter()
            step()  # the first call traces and compiles
            compile_s[key] = time.perf_counter() - t0
            candidates[key] = step
    seconds = interleaved_timing(candidates, rounds=rounds, steps=steps, stat=stat)
    result = {k: batch * seq / v for k, v in seconds.items()}
    result["step_s"] = seconds["labkit"]
    result["hook_calls"], result["hook_checks"] = hook_points_touched(ours, tokens)
    result["flops_per_token"] = cfg.flops_per_token(seq)
    result.update({f"{k}_compile_s": v for k, v in compile_s.items()})
    return result


def _shown(value: float, spec: str, unit: str = "") -> str:
    """`value` formatted with its unit, or a dash for a candidate not measured (`--no-compile`)."""
    return "—" if math.isnan(value) else f"{value:{spec}}{unit}"


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny-mla,tiny-gqa,small-mla,small-gqa")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--stat", choices=["min", "median"], default="min")
    parser.add_argument("--no-compile", action="store_true", help="eager candidates only")
    parser.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)

    print(f"machine: {machine()}")
    peak = matmul_peak()
    print(f"bf16 matmul peak (2048 x 2048): {peak / 1e9:,.0f} GFLOP/s")
    results: dict[str, dict[str, float]] = {}
    compiled = not args.no_compile
    lines = [
        f"Training step (forward + backward + AdamW), batch {args.batch} x {args.seq} tokens, "
        f"bf16 autocast, fp32 master weights; {args.stat} of {args.rounds} interleaved rounds of "
        f"{args.steps} steps. MFU against the measured bf16 matmul peak of this machine, "
        f"{peak / 1e9:,.0f} GFLOP/s (2048 x 2048).",
        "",
        "| preset | labkit eager | labkit compiled | transformers eager | transformers compiled | "
        "compiled / transformers eager | compiled / transformers compiled | MFU labkit "
        "compiled | MFU transformers compiled | compile s (labkit / transformers) | "
        "idle hooks, direct | A/A noise |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    per_call, per_check = idle_hook_cost_per_call()
    for name in args.presets.split(","):
        r = bench_preset(name, args.batch, args.seq, args.rounds, args.steps, args.stat, compiled)
        results[name] = r
        mfu = lambda tps: 100 * r["flops_per_token"] * tps / peak  # noqa: E731
        direct = (per_call * r["hook_calls"] + per_check * r["hook_checks"]) / r["step_s"]
        noise = r["labkit_copy"] / r["labkit"] - 1
        nan = float("nan")
        c, tc = r.get("labkit_compiled", nan), r.get("transformers_compiled", nan)
        line = (
            f"| {name} | {r['labkit']:,.0f} | {_shown(c, ',.0f')} | {r['transformers']:,.0f} | "
            f"{_shown(tc, ',.0f')} | {_shown(c / r['transformers'], '.2f', 'x')} | "
            f"{_shown(c / tc, '.2f', 'x')} | {_shown(mfu(c), '.1f', ' %')} | "
            f"{_shown(mfu(tc), '.1f', ' %')} | "
            f"{_shown(r.get('labkit_compiled_compile_s', nan), '.0f')} / "
            f"{_shown(r.get('transformers_compiled_compile_s', nan), '.0f')} | "
            f"{100 * direct:.3f} % | {100 * noise:+.1f} % |"
        )
        lines.append(line)
        print(line, flush=True)
    lines.append("")
    lines.append(
        f"Tokens/s per candidate. Idle hooks, direct: ({1e6 * per_call:.2f} us per idle "
        f"HookPoint call x hook points that fire per step + {1e6 * per_check:.2f} us per "
        f"has_hooks() check x checks per step; each over a plain function call) / eager step "
        f"time. A/A noise: an identical copy of the eager model against itself, what one ratio "
        f"can resolve."
    )
    lines.append(
        "Targets: labkit compiled >= 1.5x transformers eager and >= 1.0x transformers compiled; "
        "idle-hook overhead <= 3 %."
    )
    table = "\n".join(lines)
    print(table)
    if args.record:
        record(
            "labkit.bench.model",
            f"{command_line('labkit.bench.model', argv)}\n\n{table}",
        )
    return results


if __name__ == "__main__":
    main()
