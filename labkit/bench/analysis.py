"""Analysis speed on this machine:

1. activation collection (labkit.analysis.activations.collect) against TransformerLens's
   `TransformerBridge.run_with_cache` on the same weights exported to Hugging Face format, at the
   same sites (resid_post and the MLA latent, every layer), tokens/s (target >= 2x);
2. CKA for a 12 x 12 layer matrix over 20k tokens at width 768: the feature-space linear CKA and
   the streaming minibatch (debiased) CKA, seconds and the peak size of what minibatch holds.

    python -m labkit.bench.analysis [--record]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from labkit.bench.common import command_line, interleaved_timing, machine, record
from labkit.config import ModelConfig
from labkit.export import to_hf
from labkit.model import LabModel


def bench_collection(preset: str, n_seqs: int, seq_len: int, rounds: int) -> dict[str, float]:
    from transformer_lens.model_bridge import TransformerBridge

    from labkit.analysis.activations import collect

    cfg = ModelConfig.preset(preset)
    torch.manual_seed(0)
    model = LabModel(cfg).eval()
    seqs = torch.randint(0, cfg.vocab_size, (n_seqs, seq_len))
    layers = list(range(cfg.n_layers))
    from labkit.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["the bridge needs tokenizer files to boot"] * 50, 300)
    with tempfile.TemporaryDirectory() as tmp:
        to_hf(model, tmp, tokenizer=tokenizer)  # token ids are fed directly; only loading needs it
        bridge = TransformerBridge.boot_transformers(tmp, device="cpu")
    names = [f"blocks.{i}.hook_resid_post" for i in layers] + [
        f"blocks.{i}.attn.hook_kv_latent" for i in layers
    ]

    def ours():
        collect(model, seqs, ["resid_post", "kv_latent"], layers, batch_size=16, progress=False)

    def theirs():
        out = {n: [] for n in names}
        with torch.inference_mode():
            for i in range(0, n_seqs, 16):
                _, cache = bridge.run_with_cache(seqs[i : i + 16], names_filter=names)
                for n in names:
                    out[n].append(cache[n].float().reshape(-1, cache[n].shape[-1]).numpy())
        return {n: np.concatenate(v) for n, v in out.items()}

    def ours_bf16():
        collect(
            model,
            seqs,
            ["resid_post", "kv_latent"],
            layers,
            batch_size=16,
            progress=False,
            autocast=torch.bfloat16,
        )

    candidates = {"labkit": ours, "bridge": theirs, "labkit_bf16": ours_bf16}
    seconds = interleaved_timing(candidates, rounds=rounds, steps=1, warmup=1)
    return {k: n_seqs * seq_len / v for k, v in seconds.items()}


def bench_cka(n_tokens: int, width: int, layers: int, batch: int) -> dict[str, float]:
    from labkit.analysis.similarity import MinibatchCKA, cka_matrix

    g = np.random.default_rng(0)
    base = g.normal(size=(n_tokens, width)).astype(np.float32)
    acts = [
        base + 0.3 * l * g.normal(size=(n_tokens, width)).astype(np.float32) for l in range(layers)
    ]
    t0 = time.perf_counter()
    full = cka_matrix(acts)
    full_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    acc = MinibatchCKA(layers, layers)
    for i in range(0, n_tokens, batch):
        acc.update([a[i : i + batch] for a in acts], [a[i : i + batch] for a in acts])
    mb = acc.result()
    mb_s = time.perf_counter() - t0
    held = 2 * layers * batch * batch * 8  # the Gram matrices of one batch, float64
    return {
        "feature_space_s": full_s,
        "minibatch_s": mb_s,
        "minibatch_bytes": held,
        "diag_min": float(np.diag(mb).min()),
        "max_gap": float(np.abs(mb - full).max()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small-mla")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cka-tokens", type=int, default=20_000)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    col = bench_collection(args.preset, args.sequences, args.seq_len, args.rounds)
    ck = bench_cka(args.cka_tokens, 768, 12, 1000)
    table = "\n".join([
        f"Activation collection, `{args.preset}`, {args.sequences} x {args.seq_len} tokens, resid_post and kv_latent at every layer, fp32, min of {args.rounds} interleaved rounds:",
        "",
        "| collector | tokens/s |",
        "|---|---|",
        f"| labkit.analysis.activations.collect | {col['labkit']:,.0f} |",
        f"| TransformerBridge.run_with_cache (exported checkpoint) | {col['bridge']:,.0f} |",
        f"| collect(..., autocast=torch.bfloat16) (not the same precision: for orientation) | {col['labkit_bf16']:,.0f} |",
        "",
        f"labkit / bridge at the same precision (fp32): {col['labkit'] / col['bridge']:.2f}x (target >= 2x).",
        "",
        f"CKA, 12 x 12 layers, {args.cka_tokens:,} tokens, width 768: feature-space linear CKA {ck['feature_space_s']:.1f} s; "
        f"streaming minibatch debiased CKA (batches of 1,000) {ck['minibatch_s']:.1f} s holding {ck['minibatch_bytes'] / 2**20:.0f} MiB of Gram matrices "
        f"(largest difference between the two estimators, biased full vs debiased minibatch: {ck['max_gap']:.3f}).",
    ])  # fmt: skip
    print(table)
    if args.record:
        record(
            "labkit.bench.analysis",
            f"{command_line('labkit.bench.analysis', argv)}\n\n{table}",
        )
    return {"collection": col, "cka": ck}


if __name__ == "__main__":
    main()
