"""LabModel: a LLaMA-style decoder with DeepSeek MLA or grouped-query attention, instrumented with
TransformerLens hook points.

Reads top to bottom: RMSNorm, RoPE, the SwiGLU MLP, the KV cache, the attention core (fused or
eager), GQA, MLA, the block, the model, and generation. TransformerLens's weight names, tokenizer
methods and `ActivationCache` come from the mixins of `labkit.tl_protocol`; hook names and shapes
follow TransformerLens so its tools and users' habits work:

    hook_embed, blocks.{i}.hook_resid_pre|mid|post, hook_attn_out, hook_mlp_out  [b, pos, d_model]
    blocks.{i}.ln1|ln2.hook_normalized, ln_final.hook_normalized               [b, pos, d_model]
    blocks.{i}.ln1|ln2.hook_scale, ln_final.hook_scale                         [b, pos, 1]
    blocks.{i}.attn.hook_q|k|v|rot_q|rot_k|z                                    [b, pos, head, d]
    blocks.{i}.attn.hook_attn_scores|hook_pattern                               [b, head, q, k]
    blocks.{i}.mlp.hook_pre|hook_pre_linear|hook_post                           [b, pos, d_ff]
    MLA: blocks.{i}.attn.hook_q_latent (if q_lora_rank), hook_kv_latent, hook_k_rope [b, pos, d]
    cfg.use_* on: blocks.{i}.attn.hook_result|attn_in|q_input|k_input|v_input [b, pos, head, d]
    (each head's write; its pre-ln1 input copy), blocks.{i}.hook_mlp_in   [b, pos, d_model]

GQA's hook_k/hook_v carry the n_kv_heads heads (as in TransformerLens). In MLA the RoPE key is
rotated once, before all heads share it, so hook_k already holds rotated RoPE dims and hook_rot_k
fires on the same keys (kept for tools that read it); MLA's hook_k/hook_v cover every key position,
the cached ones included, because they are recomputed from the cached latent.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from labkit.config import ATTENTION_IMPLS, ModelConfig
from labkit.tl_protocol import (
    AttentionWeights,
    AttnInput,
    GQAWeights,
    MLAWeights,
    MLPWeights,
    TransformerLensModel,
)

__all__ = ["KVCache", "LabModel", "ModelConfig"]

# DeepSeek's latent norms (q_a_layernorm, kv_a_layernorm) use a fixed epsilon, whatever the config.
LATENT_NORM_EPS = 1e-6


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def attention_impl(cfg: ModelConfig, device: torch.device) -> str:
    """The implementation `cfg.attn_impl` means on `device`: "triton" or "sdpa" for "auto" (the
    Triton kernels on CUDA), else the one forced ("sdpa", "triton" or "eager")."""
    if cfg.attn_impl == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "sdpa"
    return cfg.attn_impl


def _active(hook: HookPoint | object) -> bool:
    """True when a (possibly compiled-out) hook point has hooks that must see its activation."""
    return isinstance(hook, HookPoint) and hook.has_hooks()


# --------------------------------------------------------------------------- norms, RoPE, MLP
class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 (as LLaMA/DeepSeek do), gain applied after `hook_normalized`.

    Under autocast the output is handed over already in the autocast dtype: the Linears that read
    it (q/k/v, gate/up) would each cast it themselves, forward and backward. Same numbers, one cast.
    """

    def __init__(self, dim: int, eps: float, hooked: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        if hooked:
            # hook_scale [b, pos, 1] = sqrt(mean(x^2) + eps), TransformerLens's RMSNorm scale: its
            # ActivationCache divides residual stacks by it (apply_ln_to_stack). Computed only
            # when a hook is attached; otherwise the fused rms_norm runs.
            self.hook_scale = HookPoint()
            self.hook_normalized = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        if _active(getattr(self, "hook_scale", None)):
            xf = x.float()
            scale = self.hook_scale((xf.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
            normalized = (xf / scale).to(x.dtype)
        else:
            normalized = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        if hasattr(self, "hook_normalized"):
            normalized = self.hook_normalized(normalized)
        out = self.weight * normalized
        device = out.device.type
        if torch.is_autocast_enabled(device):
            out = out.to(torch.get_autocast_dtype(device))
        return out


def rope_tables(dim: int, positions: Tensor, theta: float) -> tuple[Tensor, Tensor]:
    """cos/sin tables [len(positions), dim] in fp32, laid out for `rotate_half` (LLaMA/NeoX)."""
    exponent = torch.arange(0, dim, 2, dtype=torch.int64, device=positions.device).float() / dim
    inv_freq = 1.0 / (theta**exponent)
    freqs = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the last dim of x [b, pos, (head,) d] by position; cos/sin are [pos, d]."""
    if x.dim() == 4:
        cos, sin = cos[:, None, :], sin[:, None, :]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class SwiGLU(MLPWeights, nn.Module):
    """down(silu(gate(x)) * up(x)); hook names follow TransformerLens's gated MLP."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.hook_pre = HookPoint()
        self.hook_pre_linear = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        gate = self.hook_pre(self.gate_proj(x))
        linear = self.hook_pre_linear(self.up_proj(x))
        return self.down_proj(self.hook_post(F.silu(gate) * linear))


# --------------------------------------------------------------------------- KV cache
class LayerCache:
    """Preallocated per-layer buffers, filled along `time_dim` as tokens arrive.

    GQA holds (k [b, n_kv_heads, T, d], v [b, n_kv_heads, T, d_v]) after RoPE; MLA holds only
    (c_kv [b, T, kv_lora_rank], k_rope [b, T, qk_rope_head_dim]) after RoPE.
    """

    def __init__(self, batch_size: int, max_len: int, time_dim: int):
        self.batch_size, self.max_len, self.time_dim = batch_size, max_len, time_dim
        self.buffers: list[Tensor] = []
        self.length = 0
        self.key_mask: Tensor | None = None  # [b, max_len], False = padding; see KVCache

    def append(self, *new: Tensor) -> tuple[Tensor, ...]:
        """Store the new positions; return views over everything cached so far."""
        t = new[0].shape[self.time_dim]
        if self.length + t > self.max_len:
            raise ValueError(
                f"KV cache is full: {self.length} cached + {t} new > max_len {self.max_len}"
            )
        if not self.buffers:
            for x in new:
                shape = list(x.shape)
                shape[self.time_dim] = self.max_len
                self.buffers.append(x.new_empty(shape))
        end = self.length + t
        views = []
        for buf, x in zip(self.buffers, new, strict=True):
            buf.narrow(self.time_dim, self.length, t).copy_(x)
            views.append(buf.narrow(self.time_dim, 0, end))
        self.length = end
        return tuple(views)

    def nbytes(self) -> int:
        return sum(b.narrow(self.time_dim, 0, self.length).nbytes for b in self.buffers)


class KVCache:
    """The cache of a whole model: one LayerCache per block. Pass it to `LabModel.forward`."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int | None = None):
        max_len = max_len or cfg.max_seq_len
        time_dim = 1 if cfg.attention == "mla" else 2
        self.layers = [LayerCache(batch_size, max_len, time_dim) for _ in range(cfg.n_layers)]

    @property
    def seq_len(self) -> int:
        return self.layers[0].length

    def mask_keys(self, valid: Tensor) -> None:
        """valid [batch, max_len] (False = padding): no query attends to a padded key, so
        sequences of different lengths, left-padded to one, share a batch. RoPE scores depend
        only on the distance between positions, so a left-padded row scores as it would alone."""
        for layer in self.layers:
            layer.key_mask = valid

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)


# --------------------------------------------------------------------------- attention
def causal_mask(
    q_len: int, k_len: int, device: torch.device, key_mask: Tensor | None = None
) -> Tensor | None:
    """Boolean mask (True = attend) aligned to the end, so query i sits at k_len - q_len + i.
    None when SDPA's own `is_causal` (q_len == k_len) or no mask (q_len == 1) suffices. With a
    `key_mask` [b, >= k_len] (False = padding), [b, 1, q_len, k_len]: padded keys are hidden
    from every query but their own position (a padded query attends to itself, never to nothing)."""
    if key_mask is None and (q_len == 1 or q_len == k_len):
        return None
    offset = k_len - q_len
    q_pos = torch.arange(q_len, device=device)[:, None] + offset
    k_pos = torch.arange(k_len, device=device)[None, :]
    mask = k_pos <= q_pos
    if key_mask is None:
        return mask
    return mask & (key_mask[:, None, None, :k_len] | (k_pos == q_pos))


class AttentionCore(AttentionWeights, nn.Module):
    """Shared by GQA and MLA: softmax(q k^T * scale) v, fused or eager, and the output projection.

    The fused path (SDPA) runs unless `attn_impl == "eager"` or a hook is attached to
    hook_attn_scores / hook_pattern; then the eager path materialises both. Same function.
    Its input: ln1's output, or under TransformerLens's fork (`forked`, in labkit.tl_protocol)
    per-head copies (q, k, v) [b, pos, head, d_model], each read by its head's rows (`per_head`).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z, self.hook_result = HookPoint(), HookPoint()
        self.hook_attn_in, self.hook_q_input = HookPoint(), HookPoint()
        self.hook_k_input, self.hook_v_input = HookPoint(), HookPoint()

    @staticmethod
    def per_head(linear: nn.Linear, x: Tensor, heads: int) -> Tensor:
        """linear(x) as [b, pos, heads, d_out]; per-head copies x [b, pos, heads, d_in] go through
        their own head's rows of the weight only."""
        if x.dim() == 3:
            return linear(x).unflatten(-1, (heads, -1))
        return torch.einsum("bphi,hoi->bpho", x, linear.weight.view(heads, -1, x.shape[-1]))

    def output(self, z: Tensor) -> Tensor:
        """hook_z [b, pos, head, d_head] through o_proj. With cfg.use_attn_result each head's write
        [b, pos, head, d_model] passes hook_result before the heads are summed."""
        z = self.hook_z(z)
        if not self.cfg.use_attn_result:
            return self.o_proj(z.flatten(2))
        return self.hook_result(torch.einsum("bphd,hdm->bphm", z, self.W_O.to(z.dtype))).sum(2)

    def needs_eager(self) -> bool:
        return (
            self.cfg.attn_impl == "eager"
            or _active(self.hook_attn_scores)
            or _active(self.hook_pattern)
        )

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, scale: float, key_mask: Tensor | None = None
    ) -> Tensor:
        """q [b, H, T, d], k [b, Hkv, S, d], v [b, Hkv, S, dv] -> [b, H, T, dv]; causal, aligned
        to the end when T < S, padded keys hidden (`KVCache.mask_keys`). Never repeats K/V heads
        on the fused path."""
        t, s = q.shape[2], k.shape[2]
        mask = causal_mask(t, s, q.device, key_mask)
        groups = q.shape[1] // k.shape[1]
        if not self.needs_eager():
            if attention_impl(self.cfg, q.device) == "triton" and key_mask is None:
                from labkit.kernels import flash_attention

                return flash_attention(q, k, v, causal=True, scale=scale)
            causal = mask is None and t > 1
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=groups > 1
            )
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        if mask is None and t > 1:
            mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril()
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        scores = self.hook_attn_scores(scores)
        pattern = self.hook_pattern(torch.softmax(scores.float(), dim=-1).to(v.dtype))
        return torch.matmul(pattern, v)


class GroupedQueryAttention(GQAWeights, AttentionCore):
    """GQA: n_kv_heads key/value heads, each shared by n_heads / n_kv_heads query heads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(d, h * hd, bias=False)
        self.k_proj = nn.Linear(d, kv * hd, bias=False)
        self.v_proj = nn.Linear(d, kv * hd, bias=False)
        self.o_proj = nn.Linear(h * hd, d, bias=False)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()
        self.scale = 1.0 / math.sqrt(hd)

    def forward(self, x: AttnInput, cos: Tensor, sin: Tensor, cache: LayerCache | None) -> Tensor:
        xq, xk, xv = x if isinstance(x, tuple) else (x, x, x)
        h, kv = self.cfg.n_heads, self.cfg.n_kv_heads
        q = self.hook_q(self.per_head(self.q_proj, xq, h))
        k = self.hook_k(self.per_head(self.k_proj, xk, kv))
        v = self.hook_v(self.per_head(self.v_proj, xv, kv))
        q = self.hook_rot_q(apply_rope(q, cos, sin))
        k = self.hook_rot_k(apply_rope(k, cos, sin))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.append(k, v)
        key_mask = cache.key_mask if cache is not None else None
        return self.output(self.attend(q, k, v, self.scale, key_mask).transpose(1, 2))


class MultiHeadLatentAttention(MLAWeights, AttentionCore):
    """DeepSeek-V2/V3 MLA: keys and values are up-projected from a cached latent c_kv; one RoPE key
    (decoupled RoPE) is shared by all heads.

        q = W_UQ RMSNorm(W_DQ h)  (or W_Q h);  q = [q_nope ; RoPE(q_rope)] per head
        [c_kv ; k_rope] = W_DKV h;  c_kv = RMSNorm(c_kv);  k_rope = RoPE(k_rope), one head
        [k_nope ; v] = W_UKV c_kv per head;  k = [k_nope ; k_rope]
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        d, h = cfg.d_model, cfg.n_heads
        self.nope, self.rope = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim
        self.rank = cfg.kv_lora_rank
        if cfg.q_lora_rank:
            self.q_down = nn.Linear(d, cfg.q_lora_rank, bias=False)  # W_DQ
            self.q_norm = RMSNorm(cfg.q_lora_rank, LATENT_NORM_EPS, hooked=False)
            self.q_up = nn.Linear(cfg.q_lora_rank, h * cfg.qk_head_dim, bias=False)  # W_UQ
            self.hook_q_latent = HookPoint()
        else:
            self.q_proj = nn.Linear(d, h * cfg.qk_head_dim, bias=False)  # W_Q
        self.kv_down = nn.Linear(d, self.rank + self.rope, bias=False)  # W_DKV
        self.kv_norm = RMSNorm(self.rank, LATENT_NORM_EPS, hooked=False)
        self.kv_up = nn.Linear(self.rank, h * (self.nope + cfg.v_head_dim), bias=False)  # W_UKV
        self.o_proj = nn.Linear(h * cfg.v_head_dim, d, bias=False)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()
        self.hook_kv_latent, self.hook_k_rope = HookPoint(), HookPoint()
        self.scale = 1.0 / math.sqrt(cfg.qk_head_dim)

    def query(self, x: Tensor) -> Tensor:
        h = self.cfg.n_heads
        if self.cfg.q_lora_rank:
            return self.per_head(self.q_up, self.hook_q_latent(self.q_norm(self.q_down(x))), h)
        return self.per_head(self.q_proj, x, h)

    def latent(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(c_kv after its norm, the RoPE key before rotation) of attention inputs x."""
        c_kv, k_rope = self.kv_down(x).split([self.rank, self.rope], dim=-1)
        return self.hook_kv_latent(self.kv_norm(c_kv)), k_rope

    def forward(self, x: AttnInput, cos: Tensor, sin: Tensor, cache: LayerCache | None) -> Tensor:
        xq, xk, xv = x if isinstance(x, tuple) else (x, x, x)
        q = self.hook_q(self.query(xq))
        q_nope, q_rope = q.split([self.nope, self.rope], dim=-1)
        q = self.hook_rot_q(torch.cat((q_nope, apply_rope(q_rope, cos, sin)), dim=-1))

        c_kv, k_rope = self.latent(xk)
        c_v = self.latent(xv)[0] if isinstance(x, tuple) and xv is not xk else None
        k_rope = self.hook_k_rope(apply_rope(k_rope, cos, sin))
        offset = cache.length if cache is not None else 0
        key_mask = cache.key_mask if cache is not None else None
        if cache is not None:
            c_kv, k_rope = cache.append(c_kv, k_rope)

        if offset > 0 and not self._hooks_need_keys():
            z = self._attend_latent(q, c_kv, k_rope, key_mask)
        else:
            z = self._attend_expanded(q, c_kv, k_rope, c_v, key_mask)
        return self.output(z.transpose(1, 2))

    def _hooks_need_keys(self) -> bool:
        return self.needs_eager() or any(
            _active(hp) for hp in (self.hook_k, self.hook_v, self.hook_rot_k)
        )

    def _attend_expanded(
        self,
        q: Tensor,
        c_kv: Tensor,
        k_rope: Tensor,
        c_v: Tensor | None = None,
        key_mask: Tensor | None = None,
    ) -> Tensor:
        """Up-project every cached latent to per-head keys and values (training, prefill). Under
        the fork the latents and RoPE key are per head, and the values have their own (c_v)."""
        b, s = c_kv.shape[:2]
        h = self.cfg.n_heads
        k_nope, v = self.per_head(self.kv_up, c_kv, h).split([self.nope, self.cfg.v_head_dim], -1)
        if c_v is not None:
            v = self.per_head(self.kv_up, c_v, h)[..., self.nope :]
        if k_rope.dim() == 3:
            k_rope = k_rope[:, :, None, :].expand(b, s, h, self.rope)
        k = self.hook_rot_k(self.hook_k(torch.cat((k_nope, k_rope), dim=-1)))
        v = self.hook_v(v)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        return self.attend(q, k, v, self.scale, key_mask)

    def _attend_latent(
        self, q: Tensor, c_kv: Tensor, k_rope: Tensor, key_mask: Tensor | None = None
    ) -> Tensor:
        """Decode with W_UK absorbed into the query and W_UV into the output: attention runs on the
        latent as multi-query attention with one shared (kv_lora_rank + rope)-wide key and a
        kv_lora_rank-wide value, so the cache is never expanded to per-head K/V."""
        h, dv = self.cfg.n_heads, self.cfg.v_head_dim
        w = self.kv_up.weight.view(h, self.nope + dv, self.rank)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope :]
        q_nope, q_rope = q.split([self.nope, self.rope], dim=-1)
        q_latent = torch.einsum("bthn,hnr->bhtr", q_nope, w_uk.to(q.dtype))
        if attention_impl(self.cfg, q.device) == "triton" and key_mask is None:
            from labkit.kernels import mla_decode

            out_latent = mla_decode(q_latent, q_rope.transpose(1, 2), c_kv, k_rope, self.scale)
        else:
            q_full = torch.cat((q_latent, q_rope.transpose(1, 2)), dim=-1)
            k_full = torch.cat((c_kv, k_rope), dim=-1)[:, None]
            out_latent = self.attend(q_full, k_full, c_kv[:, None], self.scale, key_mask)
        return torch.einsum("bhtr,hvr->bhtv", out_latent, w_uv.to(out_latent.dtype))


# --------------------------------------------------------------------------- block and model
class TransformerBlock(nn.Module):
    """Pre-norm residual block: h + attn(ln1(h)), then h + mlp(ln2(h))."""

    # TransformerLens's logit-lens tools check this: hook_resid_post is the stream the model
    # unembeds (no parallel or stacked residual streams).
    hook_out_is_single_residual_stream = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.ln1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = (
            MultiHeadLatentAttention(cfg) if cfg.attention == "mla" else GroupedQueryAttention(cfg)
        )
        self.ln2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)
        self.hook_resid_pre, self.hook_resid_mid = HookPoint(), HookPoint()
        self.hook_resid_post, self.hook_mlp_in = HookPoint(), HookPoint()
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None) -> Tensor:
        h = self.hook_resid_pre(h)
        x = self.attn.fork(h, self.ln1, cache) if self.attn.forked else self.ln1(h)
        h = self.hook_resid_mid(h + self.hook_attn_out(self.attn(x, cos, sin, cache)))
        m = self.hook_mlp_in(h.clone()) if self.cfg.use_hook_mlp_in else h  # the MLP's own copy
        return self.hook_resid_post(h + self.hook_mlp_out(self.mlp(self.ln2(m))))


@dataclass
class ForwardOutput:
    logits: Tensor | None
    loss: Tensor | None


class LabModel(TransformerLensModel, HookedRootModule):
    """Decoder-only LM (RMSNorm, RoPE, SwiGLU, no biases) with GQA or MLA attention.

    `LabModel(cfg)` builds it with TransformerLens hook points (`run_with_cache`,
    `run_with_hooks`, `hooks()`); `hook_points=False` compiles them out (plain identity
    functions), which the benchmark uses to measure what idle hooks cost.

    It is a `transformer_lens.model_protocol.TransformerLensModel`: `cfg` (labkit's ModelConfig,
    which also answers to TransformerLens's names and switches), `run_with_cache` returning an
    `ActivationCache`, `run_with_hooks`, the tokenizer methods, `generate`, TransformerLens's
    weight names (`W_E`, `W_U`, `W_Q`...`W_O` stacked [layer, head, ...], `QK`/`OV`,
    `tl_parameters()`) and weight processing (`process_weights_`), all from `labkit.tl_protocol`.
    The per-head weights act on ln1's output; see `MLAWeights` for what they mean in MLA.

    Config flows one way: the model keeps a private copy of `cfg` (its `device`/`dtype` follow
    this model) and every block reads that same object; `set_attn_impl` changes it in place.
    """

    def __init__(self, cfg: ModelConfig, hook_points: bool = True):
        super().__init__()
        # A private copy: cfg.device/dtype follow this model, so two models must not share one.
        self.cfg = cfg = cfg.copy()
        self.tokenizer: Any = None
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_final = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.unembed.weight = self.embed.weight
        self.reset_parameters()
        if not hook_points:
            self._compile_out_hook_points()
        self._build_rope_tables(self.embed.weight.device)
        self.setup()
        self._sync_cfg()

    def _build_rope_tables(self, device: torch.device) -> None:
        """cos/sin for every position up to max_seq_len, built once in fp32: a compiled graph
        reads them instead of fusing cos/sin into each rotation (recomputed per batch row and
        head, forward and backward: ~12 % of a tiny model's compiled step). Not part of the
        state dict; rebuilt in fp32 whenever the model moves or changes dtype (`_apply`)."""
        positions = torch.arange(self.cfg.max_seq_len, device=device)
        cos, sin = rope_tables(self.cfg.rope_dim, positions, self.cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """normal(0, init_std); residual output projections scaled by 1/sqrt(2 n_layers) (GPT-2)."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or ".ln" in name or name.startswith("ln_final"):
                p.fill_(1.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, std / math.sqrt(2 * self.cfg.n_layers))
            else:
                p.normal_(0.0, std)

    def set_attn_impl(self, impl: str) -> None:
        """Switch attention between "auto", "sdpa", "triton" and "eager" at run time (every block
        reads the model's one config). Use "eager" when a tool that does not register
        TransformerLens hooks (nnsight) must read the pattern."""
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        self.cfg.attn_impl = impl

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        tokens: Tensor | str | list[str],
        *,
        targets: Tensor | None = None,
        cache: KVCache | None = None,
        return_type: str = "logits",
        stop_at_layer: int | None = None,
    ) -> Tensor | ForwardOutput:
        """tokens [batch, pos] -> logits [batch, pos, vocab].

        return_type "loss": mean next-token cross-entropy (on `targets` [batch, pos] if given,
        ignore index -100, else on the shifted tokens); "both": ForwardOutput(logits, loss).
        With a `cache`, tokens continue the cached sequence. `stop_at_layer=k` (as in
        TransformerLens) runs only blocks 0..k-1 and returns the residual stream after them.
        """
        if return_type not in ("logits", "loss", "both"):
            raise ValueError(f"return_type must be 'logits', 'loss' or 'both', got {return_type!r}")
        if isinstance(tokens, (str, list)):
            tokens = self.to_tokens(tokens)
        if tokens.dim() == 1:
            tokens = tokens[None]
        self._check_tokens(tokens)
        offset = cache.seq_len if cache is not None else 0
        t = tokens.shape[1]
        if offset + t > self.cfg.max_seq_len:
            raise ValueError(
                f"sequence of {offset + t} positions exceeds max_seq_len {self.cfg.max_seq_len}"
            )
        cos, sin = self.rope_cos[offset : offset + t], self.rope_sin[offset : offset + t]

        h = self.hook_embed(self.embed(tokens))
        for i, block in enumerate(self.blocks[:stop_at_layer]):
            h = block(h, cos, sin, cache.layers[i] if cache is not None else None)
        if stop_at_layer is not None:
            return h
        logits = self.unembed(self.ln_final(h))
        if return_type == "logits":
            return logits
        loss = self.loss(logits, tokens, targets)
        return loss if return_type == "loss" else ForwardOutput(logits, loss)

    @staticmethod
    def loss(logits: Tensor, tokens: Tensor, targets: Tensor | None = None) -> Tensor:
        if targets is None:
            logits, targets = logits[:, :-1], tokens[:, 1:]
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100
        )

    def _check_tokens(self, tokens: Tensor) -> None:
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"tokens must be an integer tensor, got {tokens.dtype}")
        if tokens.numel() and not torch.compiler.is_compiling():
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.cfg.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"token id {bad} is outside the vocabulary [0, {self.cfg.vocab_size}); "
                    "was the data tokenized with a different tokenizer?"
                )

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def decode(
        self,
        tokens: Tensor,
        max_new_tokens: int,
        pick: Callable[[Tensor, Tensor], Tensor],
        eos_token_id: int | None = None,
        use_cache: bool = True,
    ) -> Tensor:
        """tokens [batch, pos] extended by up to `max_new_tokens`: each step appends
        `pick(logits [batch, vocab], tokens so far)`, with a KV cache (MLA caches only c_kv and the
        RoPE key) unless `use_cache=False`. A row that has emitted `eos_token_id` repeats it, and
        decoding stops once every row has. `generate` (TransformerLens's, in labkit.tl_protocol)
        is the call to use: strings or tokens, greedy or sampled."""
        if tokens.dim() == 1:
            tokens = tokens[None]
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        total = tokens.shape[1] + max_new_tokens
        if total > self.cfg.max_seq_len:
            raise ValueError(
                f"prompt ({tokens.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
                f"max_seq_len {self.cfg.max_seq_len}"
            )
        cache = KVCache(self.cfg, tokens.shape[0], total) if use_cache else None
        logits = self(tokens, cache=cache)[:, -1]
        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        for step in range(max_new_tokens):
            nxt = pick(logits, tokens)
            if eos_token_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
                finished |= nxt == eos_token_id
            tokens = torch.cat((tokens, nxt[:, None]), dim=1)
            if step + 1 == max_new_tokens or (eos_token_id is not None and bool(finished.all())):
                break
            logits = self(nxt[:, None] if use_cache else tokens, cache=cache)[:, -1]
        return tokens
