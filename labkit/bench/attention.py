"""Attention speed: labkit's Triton kernels against every SDPA backend and eager PyTorch.

    python -m labkit.bench.attention [--quick] [--record]

Training attention (TFLOP/s of forward, backward, forward+backward; causal FLOPs counted once, as
FlashAttention reports them): GQA with head dim 64 and 128 (16 query heads, 4 KV heads), MLA with
DeepSeek's 192/128 and seed 000's 128/128 (16 heads), T from 512 to 8192, bf16. Decoding:
`mla_decode` over the latent cache against the naive path that expands the cache to per-head K/V,
batch 1-64 and cache 1k-32k: time, and bytes moved against the memory-bandwidth floor. Training:
MFU of `pretrain/run.py` with the kernel and with SDPA (`--set model.attn_impl=...`) for the small presets and
the 1.3B configs at sequence length 2048.

Without CUDA the Triton kernels cannot run at speed (the interpreter is for tests); the benchmark
then measures the CPU's PyTorch backends on a reduced grid and says that the GPU rows are not
measured.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from labkit.bench.common import command_line, machine, record, run_trainer
from labkit.resources import configs_dir

CUDA = torch.cuda.is_available()
# name: (heads, kv_heads, d_qk, d_v)
SHAPES = {
    "GQA d64": (16, 4, 64, 64),
    "GQA d128": (16, 4, 128, 128),
    "MLA 192/128": (16, 16, 192, 128),
    "MLA 128/128": (16, 16, 128, 128),
}
BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "L40S": 0.86e12, "L4": 0.3e12}


def timed(fn: Callable[[], object], reps: int) -> float:
    """Median seconds per call."""
    if CUDA:
        import triton.testing

        return (
            triton.testing.do_bench(fn, warmup=10, rep=max(25, reps * 5), return_mode="median")
            / 1e3
        )
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def eager(q, k, v, scale):
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = (q @ k.transpose(-1, -2)).float() * scale
    t = q.shape[2]
    s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(s, -1).to(v.dtype) @ v


def sdpa_with(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v, scale):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
            )

    return run


def implementations() -> dict[str, Callable]:
    from torch.nn.attention import SDPBackend

    impls: dict[str, Callable] = {}
    if CUDA:
        from labkit.kernels import flash_attention

        impls["labkit triton"] = lambda q, k, v, scale: flash_attention(
            q, k, v, causal=True, scale=scale
        )
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        if hasattr(SDPBackend, name):
            impls[f"sdpa {name.split('_')[0].lower()}"] = sdpa_with(getattr(SDPBackend, name))
    impls["eager"] = eager
    return impls


def attention_flops(b: int, h: int, t: int, dqk: int, dv: int) -> float:
    return 2.0 * b * h * t * t * (dqk + dv) / 2  # causal: half the score matrix


def bench_training(ts: list[int], batch_tokens: int, reps: int, dtype: torch.dtype) -> list[str]:
    device = "cuda" if CUDA else "cpu"
    rows = [
        "| shape | T | implementation | fwd TFLOP/s | bwd TFLOP/s | fwd+bwd TFLOP/s |",
        "|---|---|---|---|---|---|",
    ]
    impls = implementations()
    for shape, (h, hkv, dqk, dv) in SHAPES.items():
        for t in ts:
            b = max(1, batch_tokens // t)
            q = torch.randn(b, h, t, dqk, device=device, dtype=dtype, requires_grad=True)
            k = torch.randn(b, hkv, t, dqk, device=device, dtype=dtype, requires_grad=True)
            v = torch.randn(b, hkv, t, dv, device=device, dtype=dtype, requires_grad=True)
            flops = attention_flops(b, h, t, dqk, dv)
            scale = 1 / math.sqrt(dqk)
            for name, fn in impls.items():
                try:
                    out = fn(q, k, v, scale)
                    grad = torch.randn_like(out)
                    fwd = timed(lambda fn=fn: fn(q, k, v, scale), reps)
                    both = timed(
                        lambda fn=fn: torch.autograd.backward(fn(q, k, v, scale), grad), reps
                    )
                except (RuntimeError, ValueError, torch.OutOfMemoryError):
                    rows.append(f"| {shape} | {t} | {name} | n/a (rejects the shape) | | |")
                    if CUDA:
                        torch.cuda.empty_cache()
                    continue
                bwd = max(both - fwd, 1e-9)
                rows.append(
                    f"| {shape} | {t} | {name} | {flops / fwd / 1e12:.2f} | {2.5 * flops / bwd / 1e12:.2f} | "
                    f"{3.5 * flops / both / 1e12:.2f} |"
                )
            print(rows[-1], flush=True)
    return rows


def bench_decode(batches: list[int], caches: list[int], reps: int) -> list[str]:
    """mla_decode against expanding the latent cache to per-head K/V (seed 000's MLA shape)."""
    from labkit.kernels import mla_decode

    h, r, dr, dn, dv = 16, 512, 32, 96, 128
    dtype = torch.bfloat16
    peak_bw = next((v for k, v in BANDWIDTH.items() if k in torch.cuda.get_device_name()), None)
    rows = [
        "| batch | cache | mla_decode ms | naive ms | speed-up | mla_decode GB/s | floor ms | x floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    w_ukv = torch.randn(h * (dn + dv), r, device="cuda", dtype=dtype) / math.sqrt(r)
    for b in batches:
        for s in caches:
            c = torch.randn(b, s, r, device="cuda", dtype=dtype)
            kr = torch.randn(b, s, dr, device="cuda", dtype=dtype)
            ql = torch.randn(b, h, 1, r, device="cuda", dtype=dtype)
            qr = torch.randn(b, h, 1, dr, device="cuda", dtype=dtype)
            qn = torch.randn(b, 1, h, dn, device="cuda", dtype=dtype)
            scale = 1 / math.sqrt(dn + dr)

            def naive():
                kv = (c @ w_ukv.t()).view(b, s, h, dn + dv)
                k = torch.cat([kv[..., :dn], kr[:, :, None].expand(b, s, h, dr)], -1).transpose(
                    1, 2
                )
                q = torch.cat([qn, qr.transpose(1, 2)], -1).transpose(1, 2)
                return F.scaled_dot_product_attention(
                    q, k, kv[..., dn:].transpose(1, 2), scale=scale
                )

            ours = timed(lambda: mla_decode(ql, qr, c, kr, scale), reps)
            theirs = timed(naive, reps)
            moved = (c.numel() + kr.numel()) * 2
            floor = moved / peak_bw if peak_bw else float("nan")
            rows.append(
                f"| {b} | {s} | {ours * 1e3:.3f} | {theirs * 1e3:.3f} | {theirs / ours:.1f}x | "
                f"{moved / ours / 1e9:.0f} | {floor * 1e3:.3f} | {ours / floor:.2f} |"
            )
            print(rows[-1], flush=True)
    return rows


def bench_training_mfu(presets: list[str], steps: int) -> list[str]:
    rows = ["| preset | attention | MFU | tokens/s |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        from labkit.config import DataConfig
        from labkit.data.build import build

        build(DataConfig.load(configs_dir() / "data" / "ci.toml"), data, quiet=True)
        for preset in presets:
            for impl in ("triton", "sdpa"):
                run_dir = Path(tmp) / f"{preset}-{impl}"
                sets = [f"model.preset='{preset}'", f"data.dir='{data}'", "train.seq_len=2048", "train.micro_batch=4",
                        f"train.batch_tokens={4 * 2048 * 4}", f"train.tokens={steps * 4 * 2048 * 4}", "log.every_steps=5",
                        f"eval.every_steps={steps}", "eval.tokens_per_split=4096", f"checkpoint.resume_every_steps={steps}",
                        "checkpoint.log_spaced_until_step=0", f"checkpoint.every_tokens={10**15}", "log.tensorboard=false"]  # fmt: skip
                records = run_trainer(run_dir, [*sets, f"model.attn_impl='{impl}'"])
                lines = [r for r in records if "mfu" in r]
                last = lines[-1]
                rows.append(
                    f"| {preset} | {impl} | {100 * (last['mfu'] or 0):.1f} % | {last['tokens_per_s']:,.0f} |"
                )
                print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    sections = []
    if CUDA:
        ts = [512, 2048] if args.quick else [512, 1024, 2048, 4096, 8192]
        sections.append(("Training attention, bf16", bench_training(ts, 16384, 10, torch.bfloat16)))
        batches = [1, 8] if args.quick else [1, 4, 16, 64]
        caches = [1024, 8192] if args.quick else [1024, 4096, 16384, 32768]
        sections.append(
            ("MLA decode (16 heads, d_c 512, RoPE 32), bf16", bench_decode(batches, caches, 20))
        )
        presets = ["small-mla", "small-gqa"] + ([] if args.quick else ["mla-1.3b", "gqa-1.3b"])
        try:
            mfu_rows = bench_training_mfu(presets, 10)
        except ModuleNotFoundError as err:  # a GPU machine with only torch and triton
            mfu_rows = [
                f"Not measured: the trainer needs `{err.name}` (make gpu-check installs it)."
            ]
        sections.append(("pretrain/run.py MFU at seq 2048, kernel vs SDPA", mfu_rows))
    else:
        note = ("No CUDA device in this session: the Triton kernel rows, the MLA-decode rows and the training "
                "MFU rows are NOT MEASURED. Below, the CPU's PyTorch backends on a reduced grid (T = 512, bf16) "
                "for orientation only.")  # fmt: skip
        print(note)
        sections.append((note, bench_training([512], 2048, 3, torch.bfloat16)))
    body = "\n\n".join(f"{title}\n\n" + "\n".join(rows) for title, rows in sections)
    print(body)
    if args.record:
        record(
            "labkit.bench.attention",
            f"{command_line('labkit.bench.attention', argv)}\n\n{body}",
        )


if __name__ == "__main__":
    main()
