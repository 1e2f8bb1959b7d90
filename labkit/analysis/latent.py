"""The MLA latent c_kv: how many of its kv_lora_rank dimensions a model uses, and what they carry.

- `spectrum(c_kv)`: singular values of the centred latent, the variance share of each direction,
  and two effective ranks (participation ratio; entropy rank, exp of the spectral entropy).
- `kv_variance_explained(model, layer, c_kv, ranks)`: the share of the variance of the keys
  (k_nope) and values that survives when c_kv is reduced to its top-r principal directions.
- `truncated_latent_loss(...)` / `direction_ablation_loss(...)`: next-token loss when a layer's
  latent is projected onto its top-r directions, or when single directions are mean-ablated,
  through the `hook_kv_latent` hook point.
- `kv_latent_patching(model, clean, corrupted, metric)`: activation patching of c_kv at every
  (layer, position) with TransformerLens's own `patching.generic_activation_patch`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def _f64(x: Any) -> torch.Tensor:
    return (
        torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        .detach()
        .to(torch.float64)
        .cpu()
    )


@dataclass
class Spectrum:
    singular_values: np.ndarray  # of the centred latent, descending
    variance_share: np.ndarray  # per direction, sums to 1
    participation_ratio: float  # (sum l)^2 / sum l^2 over the variances l
    entropy_rank: float  # exp(-sum p log p), p = variance shares
    mean: np.ndarray  # [r]
    directions: np.ndarray  # [r, r]: column j is the j-th principal direction


def spectrum(c_kv: Any) -> Spectrum:
    """c_kv [n_tokens, kv_lora_rank] (e.g. collected at `kv_latent`)."""
    x = _f64(c_kv)
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"c_kv must be [n_tokens >= 2, rank], got {tuple(x.shape)}")
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    var = s**2
    share = var / var.sum()
    nz = share[share > 0]
    return Spectrum(
        singular_values=s.numpy(),
        variance_share=share.numpy(),
        participation_ratio=float(var.sum() ** 2 / (var**2).sum()),
        entropy_rank=float(torch.exp(-(nz * nz.log()).sum())),
        mean=mean.numpy(),
        directions=vh.T.numpy(),
    )


def _project(x: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """mean + (x - mean) projected onto the span of `basis` columns."""
    return mean + ((x - mean) @ basis) @ basis.T


def kv_variance_explained(
    model: torch.nn.Module, layer: int, c_kv: Any, ranks: Sequence[int]
) -> dict[str, list[float]]:
    """For each r in `ranks`, the share of k_nope and v variance (over all heads) kept when c_kv is
    replaced by its projection on the top-r principal directions."""
    attn = model.blocks[layer].attn
    if not hasattr(attn, "kv_up"):
        raise ValueError(f"layer {layer} has no MLA latent (is this a GQA model?)")
    x = _f64(c_kv)
    spec = spectrum(x)
    w = attn.kv_up.weight.detach().to(torch.float64).cpu()  # [H * (nope + v), r]
    h, nope = model.cfg.n_heads, model.cfg.qk_nope_head_dim
    w = w.view(h, nope + model.cfg.v_head_dim, -1)
    w_k, w_v = w[:, :nope].reshape(-1, w.shape[-1]), w[:, nope:].reshape(-1, w.shape[-1])
    mean, dirs = torch.from_numpy(spec.mean), torch.from_numpy(spec.directions)
    out: dict[str, list[float]] = {"k": [], "v": []}
    for name, wm in (("k", w_k), ("v", w_v)):
        full = x @ wm.T
        total = ((full - full.mean(0)) ** 2).sum()
        for r in ranks:
            approx = _project(x, mean, dirs[:, :r]) @ wm.T
            out[name].append(float(1 - ((full - approx) ** 2).sum() / total))
    return out


def _loss(model: torch.nn.Module, tokens: torch.Tensor, hooks: list) -> float:
    with torch.inference_mode():
        return float(model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks))


def truncated_latent_loss(
    model: torch.nn.Module, tokens: torch.Tensor, layer: int, spec: Spectrum, ranks: Sequence[int]
) -> dict[int, float]:
    """Next-token loss on tokens [batch, pos] with layer `layer`'s c_kv projected onto its top-r
    directions (r = kv_lora_rank reproduces the clean loss)."""
    mean = torch.from_numpy(spec.mean).float()
    dirs = torch.from_numpy(spec.directions).float()
    name = f"blocks.{layer}.attn.hook_kv_latent"
    out = {}
    for r in ranks:
        basis = dirs[:, :r]

        def hook(x, hook, basis=basis):
            return _project(x.float(), mean.to(x.device), basis.to(x.device)).to(x.dtype)

        out[r] = _loss(model, tokens, [(name, hook)])
    return out


def truncated_all_layers_loss(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    specs: Sequence[Spectrum],
    ranks: Sequence[int],
) -> dict[int, float]:
    """Next-token loss with every layer's c_kv projected at once onto its own top-r directions
    (`specs[layer]`); r = 0 keeps only each layer's mean latent. What a KV cache of r numbers per
    token and layer (plus the RoPE key) would cost in loss, if it kept the top directions."""
    means = [torch.from_numpy(s.mean).float() for s in specs]
    dirs = [torch.from_numpy(s.directions).float() for s in specs]
    out = {}
    for r in ranks:
        hooks = []
        for layer, (mean, d) in enumerate(zip(means, dirs, strict=True)):

            def hook(x, hook, mean=mean, basis=d[:, :r]):
                return _project(x.float(), mean.to(x.device), basis.to(x.device)).to(x.dtype)

            hooks.append((f"blocks.{layer}.attn.hook_kv_latent", hook))
        out[r] = _loss(model, tokens, hooks)
    return out


def direction_ablation_loss(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    layer: int,
    spec: Spectrum,
    directions: Sequence[int],
) -> dict[int, float]:
    """Loss when single principal directions of c_kv are mean-ablated (the latent's component along
    the direction is replaced by the mean's)."""
    dirs = torch.from_numpy(spec.directions).float()
    return {j: _direction_ablated_loss(model, tokens, layer, spec, dirs[:, j]) for j in directions}


def random_direction_ablation_loss(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    layer: int,
    spec: Spectrum,
    n: int = 8,
    seed: int = 0,
) -> list[float]:
    """The control for `direction_ablation_loss`: the loss when `n` random unit directions of the
    latent space (uniform on the sphere) are mean-ablated the same way, one at a time."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(spec.directions.shape[0], n, generator=g)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    return [_direction_ablated_loss(model, tokens, layer, spec, dirs[:, j]) for j in range(n)]


def _direction_ablated_loss(
    model: torch.nn.Module, tokens: torch.Tensor, layer: int, spec: Spectrum, v: torch.Tensor
) -> float:
    mean = torch.from_numpy(spec.mean).float()

    def hook(x, hook):
        v_, m = v.to(x.device), mean.to(x.device)
        coef = (x.float() - m) @ v_
        return (x.float() - coef[..., None] * v_).to(x.dtype)

    return _loss(model, tokens, [(f"blocks.{layer}.attn.hook_kv_latent", hook)])


@torch.no_grad()
def kv_latent_patching(
    model: torch.nn.Module,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    metric: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """[layers, pos]: `metric(logits)` of the corrupted run with one layer's c_kv at one position
    replaced by the clean run's, for every (layer, position) — TransformerLens's
    `generic_activation_patch` with its `layer_pos_patch_setter` on `hook_kv_latent`."""
    from transformer_lens import patching

    _, clean_cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("kv_latent"))
    return patching.generic_activation_patch(
        model,
        corrupted,
        clean_cache,
        metric,
        patch_setter=patching.layer_pos_patch_setter,
        activation_name="kv_latent",
        index_axis_names=("layer", "pos"),
    )
