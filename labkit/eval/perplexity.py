"""Perplexity of a model on any held-out split of its data set: the evaluation that works on
every corpus, own text included (the labkit_suite tasks need the synthetic world's splits).

Each document (from the split's eval shards, <|endoftext|> included) is cut into windows of the
model's context; every token after a window's first is scored once, so the number is the mean
negative log-likelihood per predicted token over the whole split (or its first `documents`)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from labkit.data.build import load_manifest
from labkit.data.shards import iter_documents
from labkit.run import Milestone


def split_documents(data_dir: str | Path, split: str, documents: int | None = None) -> list:
    """Token arrays of an eval split's documents, from its shards; an unknown split names the
    splits the data set has."""
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    recs = manifest["shards"]["eval"].get(split)
    if not recs:
        splits = sorted(manifest["shards"]["eval"])
        raise ValueError(f"{data_dir} has no eval split {split!r}; its splits: {splits}")
    vocab = manifest["tokenizer"]["vocab_size"]
    docs = [doc for r in recs for doc in iter_documents(data_dir / "eval" / r["file"], vocab)]
    return docs[:documents] if documents else docs


@torch.no_grad()
def perplexity(model: torch.nn.Module, documents: Sequence[np.ndarray], batch: int = 8) -> dict:
    """Mean next-token loss and perplexity of `model` over `documents` (token id arrays). A
    model trained with a first token (`bos_token_id`) reads every window after it, and then
    every token of a document is scored; otherwise every token after a document's first."""
    ctx, bos = model.cfg.max_seq_len, model.cfg.bos_token_id
    windows = []
    for doc in documents:
        doc = np.asarray(doc, dtype=np.int64)
        if bos is not None:
            windows += [np.concatenate([[bos], doc[s : s + ctx]]) for s in range(0, len(doc), ctx)]
            continue
        for start in range(0, max(1, len(doc) - 1), ctx):
            window = doc[start : start + ctx + 1]
            if len(window) >= 2:
                windows.append(window)
    if not windows:
        raise ValueError("no document has two tokens: nothing to score")
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        group = windows[i : i + batch]
        width = max(len(w) for w in group)
        tokens = torch.zeros(len(group), width, dtype=torch.long)
        targets = torch.full((len(group), width - 1), -100, dtype=torch.long)
        for j, w in enumerate(group):
            tokens[j, : len(w)] = torch.from_numpy(w)
            targets[j, : len(w) - 1] = torch.from_numpy(w[1:])
        logits = model(tokens[:, :-1].to(device)).float()
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            targets.reshape(-1).to(device),
            ignore_index=-100,
            reduction="sum",
        )
        total += float(loss)
        count += int((targets != -100).sum())
    mean = total / count
    return {
        "tokens": count,
        "documents": len(documents),
        "loss": mean,
        "perplexity": math.exp(mean),
    }


def perplexity_over_milestones(
    milestones: Sequence[Milestone], split: str, documents: int | None = None, batch: int = 8
) -> list[dict[str, Any]]:
    """One row per milestone: its tokens seen and the split's loss and perplexity."""
    from labkit.study import over_milestones

    def measure(at) -> dict[str, Any]:
        docs = split_documents(at.milestone.data_path, split, documents)
        return {"tokens_seen": at.milestone.tokens, "split": split,
                **perplexity(at.model, docs, batch)}  # fmt: skip

    return over_milestones(milestones, measure)  # "tokens": the predicted tokens counted


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    from labkit.fileio import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(rows, indent=2) + "\n").encode())
