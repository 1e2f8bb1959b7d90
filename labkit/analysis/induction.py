"""Head types and induction: previous-token, duplicate-token and induction scores per head with the
semantics of TransformerLens's `head_detector`; the repeated-random-tokens test; the in-context
learning score; and the training step at which induction heads form.

Works on any model with TransformerLens hook names (`blocks.{i}.attn.hook_pattern`): LabModel, or
a TransformerBridge over an exported checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

HeadKind = Literal["previous_token", "duplicate_token", "induction"]
ErrorMeasure = Literal["mul", "abs"]


# --------------------------------------------------------------------------- detection patterns
def detection_pattern(kind: HeadKind, tokens: torch.Tensor) -> torch.Tensor:
    """[pos, pos] lower-triangular 0/1 pattern of an ideal head of `kind` on a token sequence."""
    tokens = tokens.reshape(-1).cpu()
    n = tokens.shape[0]
    if kind == "previous_token":
        return torch.diag(torch.ones(n - 1), -1)
    same = (tokens[:, None] == tokens[None, :]).float()
    duplicate = torch.tril(same, diagonal=-1)  # earlier occurrences of the same token
    if kind == "duplicate_token":
        return duplicate
    if kind == "induction":  # attend to the token after an earlier occurrence
        shifted = torch.zeros_like(duplicate)
        shifted[:, 1:] = duplicate[:, :-1]
        return torch.tril(shifted)
    raise ValueError(f"kind must be previous_token, duplicate_token or induction; got {kind!r}")


def pattern_score(
    pattern: torch.Tensor,
    detection: torch.Tensor,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    error_measure: ErrorMeasure = "mul",
) -> float:
    """How well one head's [q, k] attention pattern matches a detection pattern, exactly as
    TransformerLens computes it: "mul" is the share of attention on the pattern's ones; "abs" is
    1 - mean |pattern - detection| x n, rounded to 3 decimals."""
    pattern = pattern.detach().float().cpu().clone()
    detection = detection.float()
    if error_measure == "mul":
        if exclude_bos:
            pattern[:, 0] = 0
        if exclude_current_token:
            pattern.fill_diagonal_(0)
        return ((pattern * detection).sum() / pattern.sum()).item()
    if error_measure != "abs":
        raise ValueError(f"error_measure must be 'mul' or 'abs', got {error_measure!r}")
    diff = (pattern - detection).abs()
    if exclude_bos:
        diff[:, 0] = 0
    if exclude_current_token:
        diff.fill_diagonal_(0)
    return 1 - round((diff.mean() * len(diff)).item(), 3)


def attention_patterns(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """[batch, layers, heads, q, k] attention patterns through the model's hook points."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    names = sorted(
        (k for k in cache if k.endswith("attn.hook_pattern")),
        key=lambda k: int(k.split(".")[1]),
    )
    return torch.stack([cache[name] for name in names], dim=1)


@torch.no_grad()
def head_scores(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    kind: HeadKind,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    error_measure: ErrorMeasure = "mul",
) -> torch.Tensor:
    """[layers, heads] scores for each sequence of tokens [batch, pos], averaged over the batch
    (TransformerLens's `detect_head` on a list of sequences)."""
    tokens = tokens if tokens.dim() == 2 else tokens[None]
    patterns = attention_patterns(model, tokens)
    scores = torch.zeros(patterns.shape[:3])
    for b in range(tokens.shape[0]):
        detection = detection_pattern(kind, tokens[b])
        for layer in range(patterns.shape[1]):
            for head in range(patterns.shape[2]):
                scores[b, layer, head] = pattern_score(
                    patterns[b, layer, head],
                    detection,
                    exclude_bos,
                    exclude_current_token,
                    error_measure,
                )
    return scores.mean(0)


# --------------------------------------------------------------------------- repeated random tokens
def repeated_random_tokens(
    vocab_size: int, seq_len: int, batch: int = 8, seed: int = 0, bos: int | None = None
) -> torch.Tensor:
    """[batch, (1 +) 2 * seq_len]: a random sequence followed by itself (after an optional BOS)."""
    g = torch.Generator().manual_seed(seed)
    half = torch.randint(0, vocab_size, (batch, seq_len), generator=g)
    parts = [half, half]
    if bos is not None:
        parts.insert(0, torch.full((batch, 1), bos, dtype=half.dtype))
    return torch.cat(parts, dim=1)


def repeated_segments(
    vocab_size: int, length: int, batch: int, generator: torch.Generator, min_half: int = 4
) -> torch.Tensor:
    """[batch, length] training sequences of back-to-back blocks [r, r], each r random tokens of a
    random length in [min_half, length // 2]. Half of every block is predictable only by copying,
    and because the distance to the earlier copy changes from block to block, only a head that
    finds the earlier occurrence by content (an induction head) can copy -- with one fixed period
    a head attending a fixed distance back scores as an induction head on a test of that period."""
    rows = []
    for _ in range(batch):
        row: list[torch.Tensor] = []
        filled = 0
        while filled < length:
            half = int(
                torch.randint(min_half, max(min_half, length // 2) + 1, (1,), generator=generator)
            )
            r = torch.randint(0, vocab_size, (half,), generator=generator)
            row += [r, r]
            filled += 2 * half
        rows.append(torch.cat(row)[:length])
    return torch.stack(rows)


@dataclass
class RepeatedTokensResult:
    # [layers, heads]: the second-copy score (Olsson et al. 2022, ARENA): the mean over
    # second-copy queries of the attention to the token after that token's first occurrence;
    # at most 1
    second_copy_score: torch.Tensor
    # [layers, heads]: TransformerLens's detect_head("induction_head") on the same sequences: the
    # attention mass on those keys over the mass of every query's row, first copy included (at
    # most about 0.5 on [r, r])
    tl_score: torch.Tensor
    loss_first: float  # mean next-token loss over the first copy
    loss_second: float  # over the second copy: low when the model copies in context
    loss_per_position: torch.Tensor  # [2 * seq_len - 1 (+1)]
    copy_loss_drop_per_sequence: torch.Tensor  # [batch]: first-copy minus second-copy loss


@torch.no_grad()
def repeated_tokens_test(
    model: torch.nn.Module, tokens: torch.Tensor, seq_len: int
) -> RepeatedTokensResult:
    """The repeated-random-tokens test (Olsson et al. 2022): on [.., r, r], an induction head at a
    token of the second copy attends to the token right after that token's first occurrence; a model
    with induction predicts the second copy far better than the first."""
    offset = tokens.shape[1] - 2 * seq_len  # 1 with a BOS
    patterns = attention_patterns(model, tokens).float().cpu()  # [b, L, H, q, k]
    q = torch.arange(offset + seq_len, tokens.shape[1])
    k = q - seq_len + 1
    second_copy = patterns[:, :, :, q, k].mean(dim=(0, 3))
    detections = torch.stack([detection_pattern("induction", row) for row in tokens.cpu()])
    tl = (patterns * detections[:, None, None]).sum((-1, -2)) / patterns.sum((-1, -2))
    nll = copy_losses(model, tokens)
    first_rows, second_rows = nll[:, offset : offset + seq_len - 1], nll[:, offset + seq_len :]
    per_pos = nll.mean(0)
    drop = first_rows.mean(1) - second_rows.mean(1)
    return RepeatedTokensResult(second_copy, tl.mean(0), first_rows.mean().item(),
                                second_rows.mean().item(), per_pos, drop)  # fmt: skip


def copy_losses(model: torch.nn.Module, tokens: torch.Tensor, fwd_hooks=()) -> torch.Tensor:
    """[batch, pos - 1] next-token losses (position i predicts token i + 1), under `fwd_hooks`."""
    with torch.no_grad():
        logits = (
            model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks)) if fwd_hooks else model(tokens)
        )
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, tokens[:, 1:, None])[..., 0].cpu()


@torch.no_grad()
def in_context_learning_score(
    model: torch.nn.Module, tokens: torch.Tensor, early: int = 50, late: int = 500
) -> float:
    """Olsson et al.'s ICL score: loss at the `late`-th token minus loss at the `early`-th token,
    averaged over the batch [batch, pos > late]. Negative: later tokens are predicted better."""
    curve = in_context_learning_curve(model, tokens, early, [late], n_bootstrap=0)
    return curve["scores"][0]


@torch.no_grad()
def in_context_learning_curve(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    early: int,
    positions: Sequence[int],
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The ICL score (loss at the token at position p minus at position `early`) for every p of
    `positions` on documents [n, pos > max(positions)], with 95 % bootstrap intervals over the
    documents (none for `n_bootstrap=0`)."""
    last = max(positions)
    if tokens.shape[1] <= last:
        raise ValueError(f"sequences need more than {last} tokens, got {tokens.shape[1]}")
    logits = model(tokens[:, : last + 1])
    logp = torch.log_softmax(logits.float(), dim=-1)
    loss_at = lambda i: -logp[:, i - 1].gather(-1, tokens[:, i, None])[:, 0].cpu()  # noqa: E731
    diffs = torch.stack([loss_at(p) - loss_at(early) for p in positions])  # [positions, docs]
    out: dict[str, Any] = {"positions": list(positions),
                           "scores": diffs.mean(1).tolist()}  # fmt: skip
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        draws = torch.stack([diffs[:, rng.integers(0, diffs.shape[1], diffs.shape[1])].mean(1)
                             for _ in range(n_bootstrap)])  # fmt: skip
        out["ci"] = [[float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]
                     for d in draws.T.numpy()]  # fmt: skip
    return out


def uniform_second_copy_score(seq_len: int, offset: int = 0) -> float:
    """The second-copy score of a head attending uniformly over its causal window on
    [offset tokens, r, r] with |r| = seq_len: the mean of 1 / (q + 1) over second-copy queries q.
    A score must clear this (and the 0.3 threshold) before it means anything."""
    q = np.arange(offset + seq_len, offset + 2 * seq_len)
    return float(np.mean(1.0 / (q + 1)))


def uniform_tl_score(seq_len: int, offset: int = 0) -> float:
    """TransformerLens's induction score (detect_head, "mul") of a head attending uniformly: the
    same stripe's mass divided by every query's row (offset + 2 seq_len rows of mass 1)."""
    return uniform_second_copy_score(seq_len, offset) * seq_len / (offset + 2 * seq_len)


def head_mean_ablation(layer: int, head: int, z_mean: torch.Tensor) -> tuple[str, Any]:
    """A forward hook replacing one head's hook_z by its mean `z_mean` [d_head] (mean-ablation,
    as Olsson et al. use to test a head's role)."""

    def hook(z: torch.Tensor, hook: Any) -> torch.Tensor:
        z = z.clone()
        z[:, :, head] = z_mean.to(z.dtype)
        return z

    return f"blocks.{layer}.attn.hook_z", hook


def induction_mechanism(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    seq_len: int,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Olsson et al.'s argument for one model on held-out repeated random tokens [b, (1+) 2n]:
    the induction head (best second-copy score in a layer >= 1), the previous-token head feeding
    it (the head of an earlier layer attending most to the position before each query), and the
    share of the copy-loss drop (first-copy minus second-copy loss) that mean-ablating the
    induction head's hook_z removes, with a bootstrap interval over sequences."""
    rep = repeated_tokens_test(model, tokens, seq_len)
    scores = rep.second_copy_score
    if scores.shape[0] < 2:
        raise ValueError("a mechanism needs two layers: an induction head reads an earlier one")
    later = scores[1:]
    layer, head = divmod(int(later.argmax()), later.shape[1])
    layer += 1
    patterns = attention_patterns(model, tokens).float()  # [b, L, H, q, k]
    q = torch.arange(1, tokens.shape[1])
    previous = patterns[:, :layer, :, q, q - 1].mean(dim=(0, 3))  # [layers before, heads]
    prev_layer, prev_head = divmod(int(previous.argmax()), previous.shape[1])
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.attn.hook_z")
    z_mean = cache[f"blocks.{layer}.attn.hook_z"][:, :, head].float().mean(dim=(0, 1))
    nll = copy_losses(model, tokens, [head_mean_ablation(layer, head, z_mean)])
    offset = tokens.shape[1] - 2 * seq_len
    ablated = nll[:, offset : offset + seq_len - 1].mean(1) - nll[:, offset + seq_len :].mean(1)
    clean = rep.copy_loss_drop_per_sequence
    fraction = lambda rows: float(1 - ablated[rows].mean() / clean[rows].mean())  # noqa: E731
    rng = np.random.default_rng(seed)
    draws = [fraction(torch.as_tensor(rng.integers(0, len(clean), len(clean))))
             for _ in range(n_bootstrap)]  # fmt: skip
    return {
        "head": [layer, head],
        "second_copy_score": float(scores[layer, head]),
        "prev_token_head": [prev_layer, prev_head],
        "prev_token_score": float(previous[prev_layer, prev_head]),
        "copy_loss_drop": float(clean.mean()),
        "copy_loss_drop_ablated": float(ablated.mean()),
        "ablation_fraction": fraction(torch.arange(len(clean))),
        "ablation_ci": [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))],
        "sequences": len(clean),
    }


def phase_change(
    tokens_seen: list[int] | np.ndarray, scores: list[float] | np.ndarray, threshold: float = 0.3
) -> dict:
    """When induction heads form, from a score per milestone (e.g. the best head's induction
    score): the first milestone at or above `threshold`, the interval it was crossed in (last
    milestone below, first at or above; None if never crossed or already above at the first
    milestone), whether that happened strictly inside training, and the interval of steepest
    rise (reported, but a phase change only where the threshold is crossed)."""
    x, y = np.asarray(tokens_seen, dtype=float), np.asarray(scores, dtype=float)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError("need the same number (>= 2) of token counts and scores")
    order = np.argsort(x)
    x, y = x[order], y[order]
    above = np.nonzero(y >= threshold)[0]
    first = int(above[0]) if len(above) else None
    rise = np.diff(y)
    k = int(np.argmax(rise))
    return {
        "first_above_threshold": int(x[first]) if first is not None else None,
        "crossed_in": (int(x[first - 1]), int(x[first])) if first else None,
        "crossed_inside": first is not None and 0 < first < len(x) - 1,
        "steepest_rise": (int(x[k]), int(x[k + 1])),
        "rise": float(rise[k]),
        "threshold": threshold,
    }


@torch.no_grad()
def copying_scores(
    model: torch.nn.Module,
    tokens: torch.Tensor | None = None,
    n_tokens: int = 200,
    top_k: int = 5,
    seed: int = 0,
) -> torch.Tensor:
    """[layers, heads]: the share of tokens t whose own logit is among the top-k when each head's
    OV circuit writes what attending to t would move (embedding -> ln1 -> values -> output
    projection -> ln_final -> unembedding; the direct path). MLA's values are computed exactly, its
    latent norm included. High for heads that copy the token they attend to (Olsson et al.)."""
    cfg = model.cfg
    if tokens is None:
        tokens = torch.randperm(cfg.vocab_size, generator=torch.Generator().manual_seed(seed))[
            :n_tokens
        ]
    emb = model.embed.weight[tokens]  # [n, d]
    out = torch.zeros(cfg.n_layers, cfg.n_heads)
    for layer, block in enumerate(model.blocks):
        x = block.ln1(emb[:, None])[:, 0].float()
        attn = block.attn
        if cfg.attention == "mla":
            c = attn.kv_norm(attn.kv_down(x)[:, : cfg.kv_lora_rank])
            v = attn.kv_up(c).view(len(tokens), cfg.n_heads, -1)[..., cfg.qk_nope_head_dim :]
            heads = range(cfg.n_heads)
            values = {h: v[:, h] for h in heads}
        else:
            v = attn.v_proj(x).view(len(tokens), cfg.n_kv_heads, -1)
            group = cfg.n_heads // cfg.n_kv_heads
            values = {h: v[:, h // group] for h in range(cfg.n_heads)}
        w_o = attn.o_proj.weight.view(cfg.d_model, cfg.n_heads, -1)  # [d, H, dv]
        for h, vh in values.items():
            written = vh @ w_o[:, h].T  # [n, d]
            logits = model.unembed(model.ln_final(written[:, None])[:, 0])
            top = logits.topk(top_k, dim=-1).indices
            out[layer, h] = (top == tokens[:, None]).any(-1).float().mean()
    return out
