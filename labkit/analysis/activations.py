"""Collect activations at chosen hook sites, layers and token positions, in batches, within a
memory budget: arrays stay in memory when they fit and spill to .npy memmaps on disk otherwise.

    acts = collect(model, sequences, sites=["resid_post", "kv_latent"], layers=[0, 2],
                   select=lambda seq: range(len(seq)))       # which positions of each sequence
    acts["resid_post", 2]          # [n_selected_tokens, d_model] float32 (np.ndarray or np.memmap)
    acts.rows                      # [n_selected_tokens, 2]: (sequence index, position)

Sequences may have different lengths; batches are right-padded, which a causal model ignores for
every real position. Runs under `torch.inference_mode`, through the model's own hook points,
stopping after the last requested layer; `autocast=torch.bfloat16` trades precision for speed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

# Short site names -> hook name templates (TransformerLens's names; the table in labkit/model.py).
SITES = {
    "resid_pre": "blocks.{i}.hook_resid_pre",
    "resid_mid": "blocks.{i}.hook_resid_mid",
    "resid_post": "blocks.{i}.hook_resid_post",
    "attn_out": "blocks.{i}.hook_attn_out",
    "mlp_out": "blocks.{i}.hook_mlp_out",
    "mlp_post": "blocks.{i}.mlp.hook_post",
    "z": "blocks.{i}.attn.hook_z",
    "kv_latent": "blocks.{i}.attn.hook_kv_latent",
    "q_latent": "blocks.{i}.attn.hook_q_latent",
    "k_rope": "blocks.{i}.attn.hook_k_rope",
    "k": "blocks.{i}.attn.hook_k",  # [pos, head, d_head], flattened over heads when collected
    "v": "blocks.{i}.attn.hook_v",
}


MLA_ONLY_SITES = ("kv_latent", "q_latent", "k_rope")


def check_site_layers(cfg, site: str, layers: Sequence[int] | None = None) -> list[int]:
    """The one check of a site and layers against a model config (`labkit.config.ModelConfig`);
    returns the layers (all of them for None). Errors name the site or the valid layers."""
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; sites: {sorted(SITES)}")
    if site in MLA_ONLY_SITES and cfg.attention != "mla":
        raise ValueError(f"site {site!r} exists only in MLA models")
    chosen = list(range(cfg.n_layers)) if layers is None else list(layers)
    bad = [x for x in chosen if not 0 <= x < cfg.n_layers]
    if bad:
        raise ValueError(f"layers {bad}: the model has layers 0..{cfg.n_layers - 1}")
    return chosen


def hook_name(site: str, layer: int) -> str:
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; sites: {sorted(SITES)}")
    return SITES[site].format(i=layer)


@dataclass
class Activations:
    """Arrays keyed by (site, layer), rows aligned with `rows` (sequence index, position)."""

    arrays: dict[tuple[str, int], np.ndarray]
    rows: np.ndarray
    spill_dir: Path | None = None
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def __getitem__(self, key: tuple[str, int]) -> np.ndarray:
        if key not in self.arrays:
            raise KeyError(f"{key} was not collected; collected: {sorted(self.arrays)}")
        return self.arrays[key]

    @property
    def spilled(self) -> bool:
        return self.spill_dir is not None


def collect(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]] | torch.Tensor,
    sites: Sequence[str],
    layers: Sequence[int],
    select: Callable[[Sequence[int]], Iterable[int]] | None = None,
    batch_size: int = 16,
    memory_budget_bytes: int = 2 << 30,
    spill_dir: str | Path | None = None,
    progress: bool = True,
    autocast: torch.dtype | None = None,
) -> Activations:
    """Activations of `sites` x `layers` at the positions `select(sequence)` picks (all by
    default)."""
    n_layers = len(model.blocks)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range; the model has layers 0..{n_layers - 1}")
    names = {(s, layer): hook_name(s, layer) for s in sites for layer in layers}
    missing = [n for n in names.values() if n not in model.hook_dict]
    if missing:
        raise ValueError(
            f"the model has no hook {missing[0]!r} (is `kv_latent` asked of a GQA model?)"
        )
    seqs = [torch.as_tensor(s, dtype=torch.long) for s in sequences]
    picks = [
        np.asarray(list(select(s.tolist())) if select else range(len(s)), dtype=np.int64)
        for s in seqs
    ]
    rows = np.array([(i, p) for i, pos in enumerate(picks) for p in pos], dtype=np.int64).reshape(
        -1, 2
    )
    device = next(model.parameters()).device

    # One probe batch gives every array's width; then the total decides memory or disk.
    widths: dict[tuple[str, int], int] = {}
    with torch.inference_mode():
        _, cache = model.run_with_cache(
            seqs[0][None, :2].to(device), names_filter=list(names.values())
        )
    for key, name in names.items():
        widths[key] = int(np.prod(cache[name].shape[2:]))
    total = sum(len(rows) * w * 4 for w in widths.values())
    tmp = None
    if total > memory_budget_bytes:
        if spill_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="labkit-acts-")
            spill_dir = tmp.name
        spill_dir = Path(spill_dir)
        spill_dir.mkdir(parents=True, exist_ok=True)
        arrays = {
            key: np.lib.format.open_memmap(
                spill_dir / f"{key[0]}.{key[1]}.npy",
                mode="w+",
                dtype=np.float32,
                shape=(len(rows), w),
            )
            for key, w in widths.items()
        }
    else:
        spill_dir = None
        arrays = {key: np.empty((len(rows), w), dtype=np.float32) for key, w in widths.items()}

    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths pad less
    amp = torch.autocast(device.type, dtype=autocast) if autocast is not None else nullcontext()
    starts = np.concatenate([[0], np.cumsum([len(p) for p in picks])])
    bar = tqdm(total=len(seqs), desc="activations", disable=not progress, leave=False)
    with torch.inference_mode(), amp:
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            width = max(len(seqs[i]) for i in idx)
            batch = torch.zeros(len(idx), width, dtype=torch.long)
            for j, i in enumerate(idx):
                batch[j, : len(seqs[i])] = seqs[i]
            # Blocks after the last requested layer, and the unembedding, are never run.
            _, cache = model.run_with_cache(
                batch.to(device), names_filter=list(names.values()), stop_at_layer=max(layers) + 1
            )
            for key, name in names.items():
                act = cache[name].float().reshape(len(idx), width, -1).cpu().numpy()
                for j, i in enumerate(idx):
                    arrays[key][starts[i] : starts[i + 1]] = act[j, picks[i]]
            bar.update(len(idx))
    bar.close()
    for a in arrays.values():
        if isinstance(a, np.memmap):
            a.flush()
    return Activations(arrays, rows, Path(spill_dir) if spill_dir else None, tmp)
