"""Mixing sources into a curriculum: per-source weights, UniMax (Chung et al. 2023) and alpha
sampling (seed 003: alpha = 1.3 for code), stages switched at token counts (seed 004: a stage-1 and
a stage-2 mix under one continuous LR schedule), and an annealing mix for the final fraction.

The build writes the plan into the manifest; `stage_document_order` turns a stage into the exact,
seeded sequence of documents a trainer reads, so a run is reproducible from (manifest, seed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np


def normalized(weights: dict[str, float]) -> dict[str, float]:
    bad = {k: v for k, v in weights.items() if not v >= 0}
    if bad or not sum(weights.values()) > 0:
        raise ValueError(f"mix weights must be non-negative with a positive sum, got {weights}")
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items()}


def unimax(sizes: dict[str, int], budget: int, max_epochs: float = 1.0) -> dict[str, int]:
    """UniMax: spread `budget` tokens as uniformly as possible over sources, no source repeated more
    than `max_epochs` times; what a small source cannot take goes to the larger ones."""
    alloc: dict[str, int] = {}
    remaining = budget
    order = sorted(sizes, key=lambda k: (sizes[k], k))
    for i, name in enumerate(order):
        share = remaining / (len(order) - i)
        alloc[name] = int(min(share, sizes[name] * max_epochs))
        remaining -= alloc[name]
    return alloc


def alpha_weights(sizes: dict[str, int], alpha: float) -> dict[str, float]:
    """Temperature ("alpha") sampling: q_i proportional to p_i ** (1 / alpha), p_i the natural
    share; alpha = 1 is proportional, larger alpha flattens toward uniform (up-weights small
    sources)."""
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    total = sum(sizes.values())
    raw = {k: (v / total) ** (1.0 / alpha) for k, v in sizes.items() if v > 0}
    return normalized(raw)


@dataclass
class Stage:
    name: str
    fraction: float  # of the total token budget
    sampling: str = "weights"  # weights | unimax | alpha | natural
    weights: dict[str, float] = field(default_factory=dict)
    alpha: float = 1.3
    max_epochs: float = 4.0


def plan_mix(sizes: dict[str, int], total_tokens: int, stages: list[Stage]) -> list[dict]:
    """Token budget per source for each stage. Stages run in order; their fractions sum to 1."""
    if abs(sum(s.fraction for s in stages) - 1.0) > 1e-6:
        raise ValueError(f"stage fractions must sum to 1, got {[s.fraction for s in stages]}")
    plan, start = [], 0
    for i, stage in enumerate(stages):
        end = total_tokens if i == len(stages) - 1 else start + round(stage.fraction * total_tokens)
        budget = end - start
        usable = {
            k: v for k, v in sizes.items() if v > 0 and (not stage.weights or k in stage.weights)
        }
        unknown = set(stage.weights) - set(sizes)
        if unknown:
            raise ValueError(
                f"stage {stage.name!r} weights name unknown sources {sorted(unknown)}; "
                f"sources are {sorted(sizes)}"
            )
        if stage.sampling == "unimax":
            tokens = unimax(usable, budget, stage.max_epochs)
            probs = (
                normalized({k: max(v, 0) for k, v in tokens.items()})
                if sum(tokens.values())
                else {}
            )
        else:
            if stage.sampling == "weights":
                probs = normalized({k: stage.weights.get(k, 0.0) for k in usable})
            elif stage.sampling == "alpha":
                probs = alpha_weights(usable, stage.alpha)
            elif stage.sampling == "natural":
                probs = normalized({k: float(v) for k, v in usable.items()})
            else:
                raise ValueError(
                    f"stage {stage.name!r}: sampling must be one of weights, unimax, alpha, "
                    f"natural; got {stage.sampling!r}"
                )
            tokens = {k: round(p * budget) for k, p in probs.items()}
        epochs = {k: (tokens[k] / sizes[k] if sizes[k] else 0.0) for k in tokens}
        plan.append(
            {
                "name": stage.name,
                "start_token": start,
                "end_token": end,
                "sampling": stage.sampling,
                "probabilities": {k: round(v, 6) for k, v in sorted(probs.items())},
                "tokens": dict(sorted(tokens.items())),
                "epochs": {k: round(v, 4) for k, v in sorted(epochs.items())},
            }
        )
        start = end
    return plan


def stage_document_order(
    stage: dict, doc_lengths: dict[str, np.ndarray], seed: int
) -> list[tuple[str, int]]:
    """The (source, document index) sequence of a stage: each source contributes documents in a
    seeded shuffled order, repeating epochs as needed, until its token allocation is used; sources
    are then interleaved at random in proportion to their allocations."""
    rng = random.Random(f"mix-{seed}-{stage['name']}")
    per_source: dict[str, list[int]] = {}
    for source, budget in stage["tokens"].items():
        lengths = doc_lengths[source]
        if budget <= 0 or len(lengths) == 0:
            continue
        picked, used, epoch = [], 0, 0
        while used < budget:
            order = list(range(len(lengths)))
            random.Random(f"mix-{seed}-{stage['name']}-{source}-{epoch}").shuffle(order)
            for i in order:
                picked.append(i)
                used += int(lengths[i])
                if used >= budget:
                    break
            epoch += 1
        per_source[source] = picked
    slots = [s for s, docs in per_source.items() for _ in docs]
    rng.shuffle(slots)
    cursors = {s: 0 for s in per_source}
    out = []
    for s in slots:
        out.append((s, per_source[s][cursors[s]]))
        cursors[s] += 1
    return out
