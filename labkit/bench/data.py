"""Data pipeline speed on this machine: the demo corpus build, stage by stage, and tokenizer
throughput.

    python -m labkit.bench.data [--config pretrain/configs/data/demo.toml] [--record]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from labkit.bench.common import command_line, machine, record
from labkit.config import DataConfig
from labkit.data.build import build
from labkit.data.tokenizer import load_tokenizer
from labkit.resources import configs_dir


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(configs_dir() / "data" / "demo.toml"))
    parser.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    cfg = DataConfig.load(args.config)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / cfg.name
        t0 = time.perf_counter()
        manifest = build(cfg, out, quiet=True)
        build_s = time.perf_counter() - t0
        tok = load_tokenizer(out / "tokenizer.json")
        texts = [json.loads(line)["text"] for line in (out / "text" / "train.jsonl").open()]
        n_chars = sum(map(len, texts))
        t0 = time.perf_counter()
        n_tokens = sum(len(e.ids) for e in tok.encode_batch(texts))
        batch_s = time.perf_counter() - t0
        sample = texts[:2000]
        t0 = time.perf_counter()
        n_single = sum(len(tok.encode(t).ids) for t in sample)
        single_s = time.perf_counter() - t0
    train_tokens = sum(s["tokens"] for s in manifest["sources"].values())
    result = {
        "build_s": build_s,
        "train_tokens": train_tokens,
        "batch_tokens_per_s": n_tokens / batch_s,
        "single_tokens_per_s": n_single / single_s,
        "chars_per_token": n_chars / n_tokens,
    }
    sources = ", ".join(f"{k} {v['tokens']:,}" for k, v in manifest["sources"].items())
    table = "\n".join(
        [
            f"Data set `{cfg.name}` ({args.config}): {train_tokens:,} train tokens ({sources}).",
            "",
            "| measure | value |",
            "|---|---|",
            f"| full build (generate, curate, tokenizer, shards, mixes) | {build_s:.1f} s |",
            f"| tokenizer, encode_batch over the train text | {result['batch_tokens_per_s']:,.0f} tokens/s |",
            f"| tokenizer, one document at a time | {result['single_tokens_per_s']:,.0f} tokens/s |",
            f"| characters per token | {result['chars_per_token']:.2f} |",
            f"| gzip ratio of the synthetic text | {manifest['gzip_ratio_synthetic']} (target >= 0.27) |",
        ]
    )
    print(table)
    if args.record:
        record("labkit.bench.data", f"{command_line('labkit.bench.data', argv)}\n\n{table}")
    return result


if __name__ == "__main__":
    main()
