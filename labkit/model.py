"""LabModel: a LLaMA-style decoder with DeepSeek MLA or grouped-query attention, instrumented with
TransformerLens hook points.

Reads top to bottom: RMSNorm, RoPE, the SwiGLU MLP, the KV cache, the attention core (fused or
eager), GQA, MLA, the block, the model, and generation. The equations are DESIGN.md's
"Model contract"; hook names and shapes follow TransformerLens so its tools and users' habits work:

    hook_embed, blocks.{i}.hook_resid_pre|mid|post, hook_attn_out, hook_mlp_out  [b, pos, d_model]
    blocks.{i}.ln1|ln2.hook_normalized, ln_final.hook_normalized               [b, pos, d_model]
    blocks.{i}.ln1|ln2.hook_scale, ln_final.hook_scale                         [b, pos, 1]
    blocks.{i}.attn.hook_q|k|v|rot_q|rot_k|z                                    [b, pos, head, d]
    blocks.{i}.attn.hook_attn_scores|hook_pattern                               [b, head, q, k]
    blocks.{i}.mlp.hook_pre|hook_pre_linear|hook_post                           [b, pos, d_ff]
    MLA: blocks.{i}.attn.hook_q_latent (if q_lora_rank), hook_kv_latent, hook_k_rope [b, pos, d]

GQA's hook_k/hook_v carry the n_kv_heads heads (as in TransformerLens). In MLA the RoPE key is
rotated once, before all heads share it, so hook_k already holds rotated RoPE dims and hook_rot_k
fires on the same keys (kept for tools that read it); MLA's hook_k/hook_v cover every key position,
the cached ones included, because they are recomputed from the cached latent.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.FactoredMatrix import FactoredMatrix
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule
from transformer_lens.utilities import get_act_name

from labkit.config import ModelConfig

__all__ = ["KVCache", "LabActivationCache", "LabModel", "ModelConfig"]

EOT = "<|endoftext|>"  # labkit's document separator (labkit.data.tokenizer.EOT)

# DeepSeek's latent norms (q_a_layernorm, kv_a_layernorm) use a fixed epsilon, whatever the config.
LATENT_NORM_EPS = 1e-6


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def attention_impl(cfg: ModelConfig, device: torch.device) -> str:
    """The fused implementation to run: "triton" or "sdpa" ("eager" when forced)."""
    impl = os.environ.get("LABKIT_ATTN", cfg.attn_impl)
    if impl not in ("auto", "sdpa", "triton", "eager"):
        raise ValueError(f"LABKIT_ATTN must be auto, sdpa, triton or eager; got {impl!r}")
    if impl == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "sdpa"
    return impl


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


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); hook names follow TransformerLens's gated MLP."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.hook_pre = HookPoint()
        self.hook_pre_linear = HookPoint()
        self.hook_post = HookPoint()

    # TransformerLens's names ([d_model, d_mlp] in, [d_mlp, d_model] out; no biases).
    @property
    def W_gate(self) -> Tensor:
        return self.gate_proj.weight.T

    @property
    def W_in(self) -> Tensor:
        return self.up_proj.weight.T

    @property
    def W_out(self) -> Tensor:
        return self.down_proj.weight.T

    @property
    def b_in(self) -> Tensor:
        return self.up_proj.weight.new_zeros(self.up_proj.out_features)

    @property
    def b_out(self) -> Tensor:
        return self.down_proj.weight.new_zeros(self.down_proj.out_features)

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

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)


# --------------------------------------------------------------------------- attention
def causal_mask(q_len: int, k_len: int, device: torch.device) -> Tensor | None:
    """Boolean mask (True = attend) aligned to the end, so query i sits at k_len - q_len + i.
    None when SDPA's own `is_causal` (q_len == k_len) or no mask (q_len == 1) suffices."""
    if q_len == 1 or q_len == k_len:
        return None
    offset = k_len - q_len
    q_pos = torch.arange(q_len, device=device)[:, None] + offset
    return torch.arange(k_len, device=device)[None, :] <= q_pos


class AttentionCore(nn.Module):
    """Shared by GQA and MLA: softmax(q k^T * scale) v, fused or eager.

    The fused path (SDPA) runs unless `attn_impl == "eager"` or a hook is attached to
    hook_attn_scores / hook_pattern; then the eager path materialises both. Same function.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()

    # ---------------------------------------------------------------- TransformerLens weights
    # Per head, as TransformerLens names them: W_Q/W_K [head, d_model, d_qk], W_V [head, d_model,
    # d_head], W_O [head, d_head, d_model]; they act on this layer's attention input, ln1's output
    # (its gain included: labkit never folds norms into weights). No biases: b_* are zeros.
    @property
    def W_O(self) -> Tensor:
        return self.o_proj.weight.view(self.cfg.d_model, self.cfg.n_heads, -1).permute(1, 2, 0)

    @property
    def QK(self) -> FactoredMatrix:
        """[head, d_model, d_model] = W_Q W_K^T: the attention score bilinear form (times
        1/sqrt(d_qk)) between two positions at the same place, where RoPE's rotations cancel."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """[head, d_model, d_model] = W_V W_O: what a head writes for a source it fully attends."""
        return FactoredMatrix(self.W_V, self.W_O)

    def _zeros(self, *shape: int) -> Tensor:
        return self.o_proj.weight.new_zeros(shape)

    @property
    def b_Q(self) -> Tensor:
        return self._zeros(self.cfg.n_heads, self.cfg.qk_head_dim)

    @property
    def b_K(self) -> Tensor:
        return self._zeros(self.cfg.n_heads, self.cfg.qk_head_dim)

    @property
    def b_V(self) -> Tensor:
        return self._zeros(self.cfg.n_heads, self.cfg.value_head_dim)

    @property
    def b_O(self) -> Tensor:
        return self._zeros(self.cfg.d_model)

    def needs_eager(self) -> bool:
        return (
            os.environ.get("LABKIT_ATTN", self.cfg.attn_impl) == "eager"
            or _active(self.hook_attn_scores)
            or _active(self.hook_pattern)
        )

    def attend(self, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        """q [b, H, T, d], k [b, Hkv, S, d], v [b, Hkv, S, dv] -> [b, H, T, dv]; causal, aligned
        to the end when T < S. Never repeats K/V heads on the fused path."""
        t, s = q.shape[2], k.shape[2]
        mask = causal_mask(t, s, q.device)
        groups = q.shape[1] // k.shape[1]
        if not self.needs_eager():
            if attention_impl(self.cfg, q.device) == "triton":
                from labkit.kernels import flash_attention

                return flash_attention(q, k, v, causal=True, scale=scale)
            return F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=mask is None and t > 1,
                scale=scale,
                enable_gqa=groups > 1,
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


class GroupedQueryAttention(AttentionCore):
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

    @property
    def W_Q(self) -> Tensor:
        return self.q_proj.weight.view(self.cfg.n_heads, self.cfg.head_dim, -1).transpose(1, 2)

    @property
    def _W_K(self) -> Tensor:
        """[n_kv_heads, d_model, head_dim]: the key heads as stored (TransformerLens's _W_K)."""
        return self.k_proj.weight.view(self.cfg.n_kv_heads, self.cfg.head_dim, -1).transpose(1, 2)

    @property
    def _W_V(self) -> Tensor:
        return self.v_proj.weight.view(self.cfg.n_kv_heads, self.cfg.head_dim, -1).transpose(1, 2)

    @property
    def W_K(self) -> Tensor:
        """[n_heads, d_model, head_dim]: each query head's key head (repeated over its group)."""
        return self._W_K.repeat_interleave(self.cfg.n_heads // self.cfg.n_kv_heads, dim=0)

    @property
    def W_V(self) -> Tensor:
        return self._W_V.repeat_interleave(self.cfg.n_heads // self.cfg.n_kv_heads, dim=0)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None) -> Tensor:
        b, t, _ = x.shape
        hd = self.cfg.head_dim
        q = self.hook_q(self.q_proj(x).view(b, t, -1, hd))
        k = self.hook_k(self.k_proj(x).view(b, t, -1, hd))
        v = self.hook_v(self.v_proj(x).view(b, t, -1, hd))
        q = self.hook_rot_q(apply_rope(q, cos, sin))
        k = self.hook_rot_k(apply_rope(k, cos, sin))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.append(k, v)
        z = self.hook_z(self.attend(q, k, v, self.scale).transpose(1, 2))
        return self.o_proj(z.reshape(b, t, -1))


class MultiHeadLatentAttention(AttentionCore):
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

    # ---------------------------------------------------------------- TransformerLens weights
    # MLA has no per-head W_K/W_V of its own: they are products of latent factors, and two RMSNorms
    # sit inside them. For x = ln1's output at one position and head h:
    #   q_h            = (x @ W_Q[h]) / s_q(x)                 (s_q = 1 when q_lora_rank == 0)
    #   k_nope_h       = (x @ W_K[h][:, :nope]) / s_kv(x)       the c_kv RMSNorm's scale
    #   k_rope (pre-RoPE, shared by all heads) = x @ W_K[h][:, nope:]   (no norm: exact)
    #   v_h            = (x @ W_V[h]) / s_kv(x)
    # with s_kv(x) = sqrt(mean((x @ W_DKV)^2) + 1e-6) (`kv_norm_scale`) and s_q likewise over the
    # query latent (`query_norm_scale`): one positive scalar per token, shared by every head. So
    # W_V = W_DKV diag(g_kv) W_UV and W_K's nope part = W_DKV diag(g_kv) W_UK (g_kv the c_kv norm's
    # gain), W_Q = W_DQ diag(g_q) W_UQ (or W_Q itself). OV is exact up to 1/s_kv(source);
    # QK_nope up to 1/(s_q(dest) s_kv(source)); QK_rope up to 1/s_q(dest) and RoPE's rotation
    # by the relative position (none when source == dest). QK = QK_nope + QK_rope.
    def _kv_up_factors(self) -> tuple[Tensor, Tensor]:
        w = self.kv_up.weight.view(self.cfg.n_heads, self.nope + self.cfg.v_head_dim, self.rank)
        return w[:, : self.nope], w[:, self.nope :]

    @property
    def W_DKV(self) -> Tensor:
        """[d_model, kv_lora_rank]: the down-projection to c_kv (before its RMSNorm)."""
        return self.kv_down.weight[: self.rank].T

    @property
    def W_KR(self) -> Tensor:
        """[d_model, qk_rope_head_dim]: the shared RoPE key, before rotation."""
        return self.kv_down.weight[self.rank :].T

    @property
    def W_UK(self) -> Tensor:
        """[head, kv_lora_rank, qk_nope_head_dim]: c_kv -> k_nope."""
        return self._kv_up_factors()[0].transpose(1, 2)

    @property
    def W_UV(self) -> Tensor:
        """[head, kv_lora_rank, v_head_dim]: c_kv -> v."""
        return self._kv_up_factors()[1].transpose(1, 2)

    @property
    def W_Q(self) -> Tensor:
        h, qk = self.cfg.n_heads, self.cfg.qk_head_dim
        if self.cfg.q_lora_rank:
            up = self.q_up.weight.view(h, qk, -1) * self.q_norm.weight  # W_UQ diag(g_q)
            return (up @ self.q_down.weight).transpose(1, 2)
        return self.q_proj.weight.view(h, qk, -1).transpose(1, 2)

    @property
    def W_K(self) -> Tensor:
        g = self.kv_norm.weight[:, None]
        nope = self.W_DKV @ (g * self.W_UK)  # [head, d_model, nope]
        rope = self.W_KR.expand(self.cfg.n_heads, -1, -1)
        return torch.cat((nope, rope), dim=-1)

    @property
    def W_V(self) -> Tensor:
        return self.W_DKV @ (self.kv_norm.weight[:, None] * self.W_UV)

    @property
    def QK_nope(self) -> FactoredMatrix:
        return FactoredMatrix(
            self.W_Q[..., : self.nope], self.W_K[..., : self.nope].transpose(1, 2)
        )

    @property
    def QK_rope(self) -> FactoredMatrix:
        return FactoredMatrix(
            self.W_Q[..., self.nope :], self.W_K[..., self.nope :].transpose(1, 2)
        )

    def kv_norm_scale(self, x: Tensor) -> Tensor:
        """s_kv [..., pos]: the c_kv RMSNorm's divisor for attention inputs x [..., pos, d]."""
        c = (x @ self.W_DKV.to(x.dtype)).float()
        return (c.pow(2).mean(-1) + LATENT_NORM_EPS).sqrt()

    def query_norm_scale(self, x: Tensor) -> Tensor:
        """s_q [..., pos]: the query latent RMSNorm's divisor (ones when q_lora_rank == 0)."""
        if not self.cfg.q_lora_rank:
            return x.new_ones(x.shape[:-1], dtype=torch.float32)
        c = self.q_down(x).float()
        return (c.pow(2).mean(-1) + LATENT_NORM_EPS).sqrt()

    def query(self, x: Tensor) -> Tensor:
        if self.cfg.q_lora_rank:
            return self.q_up(self.hook_q_latent(self.q_norm(self.q_down(x))))
        return self.q_proj(x)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None) -> Tensor:
        b, t, _ = x.shape
        h = self.cfg.n_heads
        q = self.hook_q(self.query(x).view(b, t, h, -1))
        q_nope, q_rope = q.split([self.nope, self.rope], dim=-1)
        q = self.hook_rot_q(torch.cat((q_nope, apply_rope(q_rope, cos, sin)), dim=-1))

        c_kv, k_rope = self.kv_down(x).split([self.rank, self.rope], dim=-1)
        c_kv = self.hook_kv_latent(self.kv_norm(c_kv))
        k_rope = self.hook_k_rope(apply_rope(k_rope, cos, sin))
        offset = cache.length if cache is not None else 0
        if cache is not None:
            c_kv, k_rope = cache.append(c_kv, k_rope)

        if offset > 0 and not self._hooks_need_keys():
            z = self._attend_latent(q, c_kv, k_rope)
        else:
            z = self._attend_expanded(q, c_kv, k_rope)
        z = self.hook_z(z.transpose(1, 2))
        return self.o_proj(z.reshape(b, t, -1))

    def _hooks_need_keys(self) -> bool:
        return self.needs_eager() or any(
            _active(hp) for hp in (self.hook_k, self.hook_v, self.hook_rot_k)
        )

    def _attend_expanded(self, q: Tensor, c_kv: Tensor, k_rope: Tensor) -> Tensor:
        """Up-project every cached latent to per-head keys and values (training, prefill)."""
        b, s, _ = c_kv.shape
        h = self.cfg.n_heads
        k_nope, v = self.kv_up(c_kv).view(b, s, h, -1).split([self.nope, self.cfg.v_head_dim], -1)
        k = torch.cat((k_nope, k_rope[:, :, None, :].expand(b, s, h, self.rope)), dim=-1)
        k = self.hook_rot_k(self.hook_k(k))
        v = self.hook_v(v)
        return self.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.scale)

    def _attend_latent(self, q: Tensor, c_kv: Tensor, k_rope: Tensor) -> Tensor:
        """Decode with W_UK absorbed into the query and W_UV into the output: attention runs on the
        latent as multi-query attention with one shared (kv_lora_rank + rope)-wide key and a
        kv_lora_rank-wide value, so the cache is never expanded to per-head K/V."""
        h, dv = self.cfg.n_heads, self.cfg.v_head_dim
        w = self.kv_up.weight.view(h, self.nope + dv, self.rank)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope :]
        q_nope, q_rope = q.split([self.nope, self.rope], dim=-1)
        q_latent = torch.einsum("bthn,hnr->bhtr", q_nope, w_uk.to(q.dtype))
        if attention_impl(self.cfg, q.device) == "triton":
            from labkit.kernels import mla_decode

            out_latent = mla_decode(q_latent, q_rope.transpose(1, 2), c_kv, k_rope, self.scale)
        else:
            q_full = torch.cat((q_latent, q_rope.transpose(1, 2)), dim=-1)
            k_full = torch.cat((c_kv, k_rope), dim=-1)[:, None]
            out_latent = self.attend(q_full, k_full, c_kv[:, None], self.scale)
        return torch.einsum("bhtr,hvr->bhtv", out_latent, w_uv.to(out_latent.dtype))


# --------------------------------------------------------------------------- block and model
class TransformerBlock(nn.Module):
    """Pre-norm residual block: h + attn(ln1(h)), then h + mlp(ln2(h))."""

    # TransformerLens's logit-lens tools check this: hook_resid_post is the stream the model
    # unembeds (no parallel or stacked residual streams).
    hook_out_is_single_residual_stream = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = (
            MultiHeadLatentAttention(cfg) if cfg.attention == "mla" else GroupedQueryAttention(cfg)
        )
        self.ln2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)
        self.hook_resid_pre, self.hook_resid_mid = HookPoint(), HookPoint()
        self.hook_resid_post = HookPoint()
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None) -> Tensor:
        h = self.hook_resid_pre(h)
        h = self.hook_resid_mid(h + self.hook_attn_out(self.attn(self.ln1(h), cos, sin, cache)))
        return self.hook_resid_post(h + self.hook_mlp_out(self.mlp(self.ln2(h))))


def _identity(x: Tensor) -> Tensor:
    return x


@dataclass
class ForwardOutput:
    logits: Tensor | None
    loss: Tensor | None


# MLA's latent hooks live in the attention module; TransformerLens's get_act_name("kv_latent", 2)
# spells them at block level ("blocks.2.hook_kv_latent"). Both spellings reach the same hook.
_LATENT_ALIAS = re.compile(r"blocks\.(\d+)\.hook_(kv_latent|q_latent|k_rope)")


class LabActivationCache(ActivationCache):
    """TransformerLens's ActivationCache; MLA's latent hooks also answer to TransformerLens's
    short names (`cache["kv_latent", 1]`), so `patching.generic_activation_patch(...,
    activation_name="kv_latent")` works."""

    def __getitem__(self, key: Any) -> Tensor:
        try:
            return super().__getitem__(key)
        except KeyError:
            if isinstance(key, str):
                name = get_act_name(key)
            else:
                key = tuple(key)
                if len(key) > 1 and key[1] is not None and key[1] < 0:
                    key = (key[0], self.model.cfg.n_layers + key[1], *key[2:])
                name = get_act_name(*key)
            match = _LATENT_ALIAS.fullmatch(name)
            if match is None:
                raise
            return self.cache_dict[f"blocks.{match[1]}.attn.hook_{match[2]}"]


class LabModel(HookedRootModule):
    """Decoder-only LM (RMSNorm, RoPE, SwiGLU, no biases) with GQA or MLA attention.

    `LabModel(cfg)` builds it with TransformerLens hook points (`run_with_cache`,
    `run_with_hooks`, `hooks()`); `hook_points=False` compiles them out (plain identity
    functions), which the benchmark uses to measure what idle hooks cost.

    It is a `transformer_lens.model_protocol.TransformerLensModel`: `cfg` (labkit's ModelConfig,
    which also answers to TransformerLens's field names), `run_with_cache` returning an
    `ActivationCache`, `run_with_hooks`, `to_tokens`/`to_string`/`to_str_tokens` (once a
    tokenizer is attached: `labkit.checkpoint.load` does it), and TransformerLens's weight names
    (`W_E`, `W_U`, `W_Q`...`W_O` stacked [layer, head, ...], `QK`/`OV` as FactoredMatrix). The
    per-head weights act on ln1's output; see the MLA class for what they mean there.
    """

    def __init__(self, cfg: ModelConfig, hook_points: bool = True):
        super().__init__()
        # A private copy: cfg.device/dtype follow this model, so two models must not share one.
        self.cfg = ModelConfig.from_dict(cfg.to_dict())
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
        self.setup()
        self._sync_cfg()

    def setup(self) -> None:
        super().setup()
        for i, block in enumerate(self.blocks):
            for name in ("kv_latent", "q_latent", "k_rope"):
                hook = getattr(block.attn, f"hook_{name}", None)
                if isinstance(hook, HookPoint):  # reachable by name, never cached twice
                    self.mod_dict[f"blocks.{i}.hook_{name}"] = hook

    def _sync_cfg(self) -> None:
        self.cfg.__dict__["_device"] = self.embed.weight.device
        self.cfg.__dict__["_dtype"] = self.embed.weight.dtype

    def _apply(self, fn: Any, recurse: bool = True) -> LabModel:
        out = super()._apply(fn, recurse)
        self._sync_cfg()
        return out

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
        """Switch attention between "auto", "sdpa" and "eager" at run time. Use "eager" when a
        tool that does not register TransformerLens hooks (nnsight) must read the pattern."""
        self.cfg = self.cfg.replace(attn_impl=impl)
        self._sync_cfg()
        for module in self.modules():
            if isinstance(module, AttentionCore):
                module.cfg = self.cfg

    def _compile_out_hook_points(self) -> None:
        for name, module in list(self.named_modules()):
            if isinstance(module, HookPoint):
                parent_name, _, attr = name.rpartition(".")
                parent = self.get_submodule(parent_name) if parent_name else self
                delattr(parent, attr)
                object.__setattr__(parent, attr, _identity)

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
        positions = torch.arange(offset, offset + t, device=tokens.device)
        cos, sin = rope_tables(self.cfg.rope_dim, positions, self.cfg.rope_theta)

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

    # ------------------------------------------------------------------ TransformerLens protocol
    def run_with_cache(
        self, *model_args: Any, return_cache_object: bool = True, **kwargs: Any
    ) -> tuple[Any, ActivationCache | dict[str, Tensor]]:
        """(output, cache): a TransformerLens `ActivationCache` (MLA latent aliases resolved), or
        the plain dict with `return_cache_object=False`. Every other argument is
        HookedRootModule.run_with_cache's (names_filter, remove_batch_dim, pos_slice, ...)."""
        out, cache = super().run_with_cache(*model_args, **kwargs)
        if not return_cache_object:
            return out, cache
        has_batch_dim = not kwargs.get("remove_batch_dim", False)
        return out, LabActivationCache(cache, self, has_batch_dim=has_batch_dim)

    def set_tokenizer(self, tokenizer: Any) -> None:
        """Attach a tokenizer: a path to tokenizer.json, a `tokenizers.Tokenizer` or a
        transformers tokenizer. It becomes `model.tokenizer`, a transformers fast tokenizer with
        labkit's <|endoftext|> as its end-of-text token."""
        from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer))
        elif not isinstance(tokenizer, PreTrainedTokenizerBase):
            tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer)
        if tokenizer.eos_token is None and EOT in tokenizer.get_vocab():
            tokenizer.eos_token = EOT
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer

    def _need_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError(
                "this LabModel has no tokenizer: load checkpoints with labkit.checkpoint.load "
                "(which attaches the run's tokenizer.json) or call model.set_tokenizer(path)"
            )
        return self.tokenizer

    def to_tokens(
        self,
        input: str | list[str] | Tensor,
        prepend_bos: bool | None = None,
        padding_side: str = "right",
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> Tensor:
        """Text -> tokens [batch, pos] (a list of strings is padded with <|endoftext|> on
        `padding_side`); token tensors pass through. `prepend_bos=True` starts every sequence
        with <|endoftext|>, the document separator labkit trains with (default: no)."""
        if isinstance(input, Tensor):
            tokens = input if input.dim() == 2 else input.reshape(1, -1)
        else:
            tok = self._need_tokenizer()
            texts = [input] if isinstance(input, str) else list(input)
            ids = [tok.encode(t, add_special_tokens=False) for t in texts]
            if prepend_bos:
                ids = [[tok.eos_token_id, *x] for x in ids]
            if truncate:
                ids = [x[: self.cfg.max_seq_len] for x in ids]
            width = max(len(x) for x in ids)
            pad = [tok.pad_token_id] if tok.pad_token_id is not None else [0]
            rows = [
                x + pad * (width - len(x))
                if padding_side == "right"
                else pad * (width - len(x)) + x
                for x in ids
            ]
            tokens = torch.tensor(rows, dtype=torch.long)
        return tokens.to(self.cfg.device) if move_to_device else tokens

    def to_string(self, tokens: Tensor | list[int] | int) -> str | list[str]:
        """Tokens -> text: one string for [pos] (or an int), a list for [batch, pos]."""
        tok = self._need_tokenizer()
        tokens = torch.as_tensor(tokens)
        if tokens.dim() <= 1:
            return tok.decode(tokens.reshape(-1).tolist(), clean_up_tokenization_spaces=False)
        return [tok.decode(row.tolist(), clean_up_tokenization_spaces=False) for row in tokens]

    def to_str_tokens(
        self, input: str | Tensor | list[int], prepend_bos: bool | None = None
    ) -> list[str]:
        """Each token as its own string (of a text, or of tokens [pos] / [1, pos])."""
        if isinstance(input, str):
            tokens = self.to_tokens(input, prepend_bos=prepend_bos, move_to_device=False)[0]
        else:
            tokens = torch.as_tensor(input).reshape(-1)
        return [self.to_string([t]) for t in tokens.tolist()]

    def to_single_token(self, string: str) -> int:
        tokens = self.to_tokens(string, move_to_device=False)[0]
        if len(tokens) != 1:
            raise ValueError(f"{string!r} is {len(tokens)} tokens, not one")
        return int(tokens[0])

    @property
    def W_E(self) -> Tensor:
        """[d_vocab, d_model]."""
        return self.embed.weight

    @property
    def W_U(self) -> Tensor:
        """[d_model, d_vocab]: the unembedding as stored; it reads ln_final's output (gain
        included), so logits = model.ln_final(resid) @ W_U."""
        return self.unembed.weight.T

    @property
    def b_U(self) -> Tensor:
        return self.unembed.weight.new_zeros(self.cfg.vocab_size)

    def _stack(self, attr: str) -> Tensor:
        return torch.stack([getattr(block.attn, attr) for block in self.blocks])

    @property
    def W_Q(self) -> Tensor:
        """[layer, head, d_model, d_qk]."""
        return self._stack("W_Q")

    @property
    def W_K(self) -> Tensor:
        """[layer, head, d_model, d_qk] (GQA: each query head's key head)."""
        return self._stack("W_K")

    @property
    def W_V(self) -> Tensor:
        """[layer, head, d_model, d_head]."""
        return self._stack("W_V")

    @property
    def W_O(self) -> Tensor:
        """[layer, head, d_head, d_model]."""
        return self._stack("W_O")

    @property
    def QK(self) -> FactoredMatrix:
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def W_in(self) -> Tensor:
        return torch.stack([block.mlp.W_in for block in self.blocks])

    @property
    def W_gate(self) -> Tensor:
        return torch.stack([block.mlp.W_gate for block in self.blocks])

    @property
    def W_out(self) -> Tensor:
        return torch.stack([block.mlp.W_out for block in self.blocks])

    def tokens_to_residual_directions(self, tokens: str | int | Tensor) -> Tensor:
        """The residual direction each token's logit reads, [..., d_model], in the coordinates
        TransformerLens's ActivationCache uses: `apply_ln_to_stack` only divides by the cached
        ln_final scale, so the direction is W_U[:, token] times ln_final's gain, and
        `cache.logit_attrs(cache.decompose_resid())` sums exactly to the token's logit."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        tokens = torch.as_tensor(tokens, device=self.unembed.weight.device)
        directions = self.unembed.weight[tokens] * self.ln_final.weight
        return directions

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Tensor:
        """[d_model] zeros: LabModel has no biases."""
        return self.embed.weight.new_zeros(self.cfg.d_model)

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def generate(
        self,
        tokens: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample `max_new_tokens` continuations of tokens [batch, pos] with a KV cache (MLA caches
        only c_kv and the RoPE key). temperature 0 is greedy. Returns [batch, pos + new]."""
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
        cache = KVCache(self.cfg, tokens.shape[0], total)
        out = [tokens]
        logits = self(tokens, cache=cache)[:, -1]
        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        for step in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, generator)
            if eos_token_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
                finished |= nxt == eos_token_id
            out.append(nxt[:, None])
            if step + 1 == max_new_tokens or (eos_token_id is not None and bool(finished.all())):
                break
            logits = self(nxt[:, None], cache=cache)[:, -1]
        return torch.cat(out, dim=1)


def sample_next(
    logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> Tensor:
    """One token per row from logits [batch, vocab]."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
