"""Which part of MLA makes it slower than its GQA twin to learn copying? The miniature study's
second calibration, on the induction calibration's most favourable cell.

    python pretrain/mla_copy_ablation.py [--steps 1000] [--seeds 0 1] [--figures figures]

Trains on copy-only data exactly as `pretrain/induction_budget.py` does (vocabulary 1,024, context
64, the study's init, optimizer, clipping, bf16 autocast and token batch) four attention layers,
each with two seeds, and scores held-out repeated random tokens every `--every` steps:

- `mla`: labkit's `tiny-mla` as the study trains it;
- `mla_rope_per_head`: the same, but each head gets its own RoPE key instead of one shared by all
  heads (the latent c_kv is kept);
- `mla_without_latent`: keys and values projected straight from the layer's input per head, as in
  GQA/MHA, with MLA's head widths and its one shared RoPE key (no c_kv, no down/up factorisation);
- `gqa`: labkit's `tiny-gqa` (the study's twin: 2 key/value heads), the reference.

Writes `mla_copy_ablation` to figures/results.json (kept by `make figures`): per variant and seed
the best head's score, the copy-loss drop (first copy minus second copy) at the last step and the
curve. The two variants are written here, not in labkit's model: they exist only to locate the gap.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "pretrain"))

from induction_budget import copy_only_run, parse_checked  # noqa: E402

from labkit.config import ModelConfig  # noqa: E402
from labkit.figures import save_results  # noqa: E402
from labkit.model import LabModel, MultiHeadLatentAttention, apply_rope  # noqa: E402

VOCAB, CONTEXT = 1024, 64  # the induction calibration's most favourable cell


class MLAVariant(MultiHeadLatentAttention):
    """MLA with one part changed, for training only (no KV cache): `rope_per_head` gives every
    head its own RoPE key; `without_latent` projects k_nope and v from x per head (no c_kv)."""

    def __init__(self, cfg: ModelConfig, change: str):
        super().__init__(cfg)
        self.change, h, d = change, cfg.n_heads, cfg.d_model
        if change == "rope_per_head":
            self.kv_down = nn.Linear(d, self.rank + h * self.rope, bias=False)
        elif change == "without_latent":
            del self.kv_up, self.kv_norm
            self.kv_down = nn.Linear(d, self.rope, bias=False)  # the shared RoPE key only
            self.kv_proj = nn.Linear(d, h * (self.nope + cfg.v_head_dim), bias=False)
        else:
            raise ValueError(f"change must be rope_per_head or without_latent, got {change!r}")

    def forward(self, x: torch.Tensor, cos, sin, cache=None) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.cfg.n_heads
        q_nope, q_rope = self.query(x).view(b, t, h, -1).split([self.nope, self.rope], dim=-1)
        q = torch.cat((q_nope, apply_rope(q_rope, cos, sin)), dim=-1)
        if self.change == "rope_per_head":
            c_kv, k_rope = self.kv_down(x).split([self.rank, h * self.rope], dim=-1)
            kv = self.kv_up(self.kv_norm(c_kv)).view(b, t, h, -1)
            k_rope = apply_rope(k_rope.reshape(b, t, h, self.rope), cos, sin)
        else:
            kv = self.kv_proj(x).view(b, t, h, -1)
            k_rope = apply_rope(self.kv_down(x), cos, sin)[:, :, None].expand(b, t, h, self.rope)
        k_nope, v = kv.split([self.nope, self.cfg.v_head_dim], dim=-1)
        k = torch.cat((k_nope, k_rope), dim=-1)
        z = self.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.scale)
        return self.o_proj(z.transpose(1, 2).reshape(b, t, -1))


def mla_variant(change: str):
    """A model factory for `copy_only_run`: LabModel(cfg) with every block's attention replaced,
    initialised by LabModel's own rule and its hook points registered again."""

    def make(cfg: ModelConfig) -> LabModel:
        model = LabModel(cfg)
        for block in model.blocks:
            block.attn = MLAVariant(cfg, change)
        model.reset_parameters()
        model.setup()
        return model

    return make


VARIANTS = {  # name: (preset, model factory or None for LabModel itself)
    "mla": ("tiny-mla", None),
    "mla_rope_per_head": ("tiny-mla", mla_variant("rope_per_head")),
    "mla_without_latent": ("tiny-mla", mla_variant("without_latent")),
    "gqa": ("tiny-gqa", None),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per run")
    p.add_argument("--every", type=int, default=100, help="score every this many steps")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds per variant")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--figures", default=str(REPO / "figures"), help="where results.json lives")
    args, study = parse_checked(p, argv)
    began = time.time()
    runs: dict[str, dict[str, dict]] = {}
    for name in args.variants:
        preset, make_model = VARIANTS[name]
        for seed in args.seeds:
            start = time.time()
            run = copy_only_run(study, VOCAB, CONTEXT, args.steps, args.every, seed=seed,
                                preset=preset, make_model=make_model)  # fmt: skip
            runs.setdefault(name, {})[str(seed)] = run
            drop, took = run["final_copy_loss_drop"], time.time() - start
            print(f"{name:>20} seed {seed}: best score {run['max_score']:.3f}, copy-loss drop "
                  f"{drop:.2f} ({took:.0f} s)", flush=True)  # fmt: skip
    drops = {n: [r["final_copy_loss_drop"] for r in s.values()] for n, s in runs.items()}
    save_results(
        args.figures,
        "mla_copy_ablation",
        {
            "vocab_size": VOCAB,
            "seq_len": CONTEXT,
            "steps": args.steps,
            "seeds": args.seeds,
            "minutes": round((time.time() - began) / 60, 1),  # wall time, one thread
            "mean_copy_loss_drop": {n: round(math.fsum(d) / len(d), 3) for n, d in drops.items()},
            "runs": runs,
        },
    )
    print(f"wrote mla_copy_ablation to {Path(args.figures) / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
