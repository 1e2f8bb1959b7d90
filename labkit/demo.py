"""`make demo`: the most useful real thing labkit does today.

Builds the tiny MLA and GQA presets, shows what the hook points expose and what each KV cache
costs, decodes with and without the cache, and exports both to Hugging Face format and checks that
`transformers` gives the same logits. (The trainer replaces this with a real training run.)
"""

from __future__ import annotations

import tempfile
import time

import torch

from labkit.cli import models_table
from labkit.config import ModelConfig
from labkit.model import KVCache, LabModel


def _uncached_greedy(model: LabModel, prompt: torch.Tensor, n: int) -> torch.Tensor:
    seq = prompt
    for _ in range(n):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


def main() -> None:
    torch.manual_seed(0)
    print(models_table())
    prompt_len, new_tokens = 32, 192
    for name in ("tiny-mla", "tiny-gqa"):
        cfg = ModelConfig.preset(name)
        model = LabModel(cfg).eval()
        print(f"\n== {name}: {cfg.num_params():,} parameters, {len(model.hook_dict)} hook points")
        prompt = torch.randint(0, cfg.vocab_size, (1, prompt_len))
        _, cache = model.run_with_cache(
            prompt, names_filter=lambda n: n.startswith("blocks.0.attn")
        )
        for hook, act in cache.items():
            print(f"   {hook:<32} {tuple(act.shape)}")

        with torch.inference_mode():
            t0 = time.perf_counter()
            cached = model.generate(prompt, new_tokens, temperature=0)
            t_cached = time.perf_counter() - t0
            t0 = time.perf_counter()
            uncached = _uncached_greedy(model, prompt, new_tokens)
            t_uncached = time.perf_counter() - t0
            kv = KVCache(cfg, 1, prompt_len + new_tokens)
            model(cached, cache=kv)
        same = torch.equal(cached, uncached)
        print(
            f"   greedy decode of {new_tokens} tokens: {t_cached:.2f}s with the KV cache, "
            f"{t_uncached:.2f}s without; same tokens: {same}"
        )
        print(
            f"   KV cache for {kv.seq_len} tokens: {kv.nbytes():,} bytes in fp32 "
            f"({cfg.kv_cache_values_per_token()} values per token)"
        )
        print(f"   first generated ids: {cached[0, prompt_len : prompt_len + 12].tolist()}")

        from transformers import AutoModelForCausalLM

        from labkit.export import to_hf

        with tempfile.TemporaryDirectory() as out:
            to_hf(model, out)
            hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
            with torch.inference_mode():
                diff = (hf(prompt).logits - model(prompt)).abs().max().item()
        print(f"   exported as {type(hf).__name__}: max |logit difference| = {diff:.2e}")
    print(
        "\nNext: `make test` runs the suite; `python -m labkit.bench.model` compares training "
        "speed with transformers (see benchmarks/RESULTS.md)."
    )


if __name__ == "__main__":
    main()
