"""TransformerLens's model protocol on LabModel, kept apart from the model's computation.

labkit's modules inherit these mixins, so TransformerLens's tools and users' habits work on MLA
and GQA alike (`model.W_Q`, `model.OV`, `run_with_cache` returning an `ActivationCache`,
`to_tokens`...). Nothing here changes what the model computes; the identities each weight
satisfies are written where the weight is defined:

    MLPWeights             W_gate, W_in, W_out [layer's SwiGLU]; zero b_in, b_out
    AttentionWeights       W_O, QK, OV, zero b_Q/b_K/b_V/b_O (shared by GQA and MLA)
    GQAWeights             W_Q, W_K, W_V (key/value heads repeated over their query group)
    MLAWeights             W_DKV, W_KR, W_UK, W_UV and the per-head W_Q, W_K, W_V they imply
    TransformerLensModel   run_with_cache, tokenizer methods, stacked W_* [layer, head, ...],
                           tokens_to_residual_directions, accumulated_bias, the set_use_*
                           switches, tl_parameters, process_weights_ / fold_layer_norm, generate
    LabActivationCache     ActivationCache whose MLA latent and fork hooks answer to short names

The config's TransformerLens names (`d_head`, `d_mlp`, `n_ctx`, `normalization_type`, ...) and
switches (`use_attn_result`, `use_split_qkv_input`, ...) are `labkit.config.TransformerLensNames`,
kept beside the fields they derive from.

Per head, as TransformerLens names them: W_Q/W_K [head, d_model, d_qk], W_V [head, d_model,
d_head], W_O [head, d_head, d_model]; they act on the layer's attention input, ln1's output (its
gain included, until `fold_layer_norm` folds the residual norms' gains into the weights that read
them). No biases: every b_* is zeros.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.FactoredMatrix import FactoredMatrix
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_act_name

# An attention layer's input: ln1's output [b, pos, d_model], or TransformerLens's fork, per-head
# copies (q, k, v) [b, pos, head, d_model] (`AttentionWeights.fork`).
AttnInput = Tensor | tuple[Tensor, Tensor, Tensor]


# --------------------------------------------------------------------------- MLP
class MLPWeights:
    """TransformerLens's gated-MLP names ([d_model, d_mlp] in, [d_mlp, d_model] out)."""

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


# --------------------------------------------------------------------------- attention
def _rms_norm_without_hooks(ln: Any, x: Tensor) -> Tensor:
    """An RMSNorm's function (its gain included, its hooks not fired) on x [..., d]."""
    out = ln.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=ln.eps).to(x.dtype)
    device = out.device.type
    return out.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else out


class AttentionWeights:
    """What GQA and MLA share: the output projection per head, QK and OV, zero biases, and
    TransformerLens's fork of the attention input."""

    @property
    def forked(self) -> bool:
        """True under `cfg.use_split_qkv_input` or `cfg.use_attn_in`: every head reads its own
        copy of the residual stream (TransformerLens's fork)."""
        return self.cfg.use_split_qkv_input or self.cfg.use_attn_in

    def fork(self, resid: Tensor, ln: Any, cache: Any = None) -> tuple[Tensor, Tensor, Tensor]:
        """The per-head inputs (q, k, v) of TransformerLens's fork: resid [b, pos, d_model] (the
        block's hook_resid_pre) copied per head before ln1, through `hook_q_input`,
        `hook_k_input`, `hook_v_input` (use_split_qkv_input) or one `hook_attn_in` for all three
        (use_attn_in) [b, pos, head, d_model], then each copy normalised by ln1 on its own. ln1's
        own hooks fire once, on `resid`, as without the fork. GQA: the key/value copies are per
        KV head (hook_attn_in: KV head j reads the copy of its group's first query head). MLA:
        keys and values are per query head, so each head's latent c_kv and RoPE key are computed
        from its own copies (c_kv twice: from the key and from the value input)."""
        cfg = self.cfg
        if cfg.use_split_qkv_input and cfg.use_attn_in:
            raise ValueError(
                "use_split_qkv_input and use_attn_in are mutually exclusive (as in "
                "TransformerLens): turn one off"
            )
        if cache is not None and cfg.attention == "mla":
            raise ValueError(
                "MLA's KV cache holds one latent per position, not one per head: decode with "
                "use_split_qkv_input and use_attn_in off"
            )
        ln(resid)  # ln1's hooks (hook_scale, hook_normalized) see the shared residual
        h = cfg.n_heads
        kv = cfg.n_kv_heads if cfg.attention == "gqa" else h

        def copies(hook: Any, n: int) -> Tensor:
            return _rms_norm_without_hooks(
                ln, hook(resid[:, :, None].expand(-1, -1, n, -1).clone())
            )

        if cfg.use_attn_in:
            x = copies(self.hook_attn_in, h)
            shared = x if kv == h else x[:, :, :: h // kv]
            return x, shared, shared
        return (
            copies(self.hook_q_input, h),
            copies(self.hook_k_input, kv),
            copies(self.hook_v_input, kv),
        )

    # Per head, as TransformerLens names them: W_Q/W_K [head, d_model, d_qk], W_V [head, d_model,
    # d_head], W_O [head, d_head, d_model]; they act on this layer's attention input, ln1's output
    # (its gain included; 1 after `fold_layer_norm`). No biases: b_* are zeros.
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


class GQAWeights(AttentionWeights):
    """GQA's per-head weights: each query head's key/value head repeated over its group."""

    def ln1_readers(self) -> tuple[Any, ...]:
        """The projections that read ln1's output (where `fold_layer_norm` folds its gain)."""
        return self.q_proj, self.k_proj, self.v_proj

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


class MLAWeights(AttentionWeights):
    """MLA's latent factors and the per-head weights they imply."""

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
    def ln1_readers(self) -> tuple[Any, ...]:
        """The projections that read ln1's output (where `fold_layer_norm` folds its gain)."""
        return (self.q_down if self.cfg.q_lora_rank else self.q_proj), self.kv_down

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
        return (c.pow(2).mean(-1) + self.kv_norm.eps).sqrt()

    def query_norm_scale(self, x: Tensor) -> Tensor:
        """s_q [..., pos]: the query latent RMSNorm's divisor (ones when q_lora_rank == 0)."""
        if not self.cfg.q_lora_rank:
            return x.new_ones(x.shape[:-1], dtype=torch.float32)
        c = self.q_down(x).float()
        return (c.pow(2).mean(-1) + self.q_norm.eps).sqrt()


# --------------------------------------------------------------------------- cache and model
# MLA's latent hooks and the fork's input hooks live in the attention module; TransformerLens's
# get_act_name("kv_latent", 2) spells them at block level ("blocks.2.hook_kv_latent"), as its
# TransformerBridge aliases "blocks.2.hook_q_input". Both spellings reach the same hook.
_ATTN_HOOKS = ("kv_latent", "q_latent", "k_rope", "attn_in", "q_input", "k_input", "v_input")
_BLOCK_ALIAS = re.compile(rf"blocks\.(\d+)\.hook_({'|'.join(_ATTN_HOOKS)})")
# Hook points that fire only with a switch on (TransformerLens gates the same ones).
_SWITCHED = {"hook_result": "use_attn_result", "hook_attn_in": "use_attn_in",
             "hook_q_input": "use_split_qkv_input", "hook_k_input": "use_split_qkv_input",
             "hook_v_input": "use_split_qkv_input", "hook_mlp_in": "use_hook_mlp_in"}  # fmt: skip


class LabActivationCache(ActivationCache):
    """TransformerLens's ActivationCache; MLA's latent hooks and the fork's input hooks also
    answer to TransformerLens's short names (`cache["kv_latent", 1]`, `cache["q_input", 1]`), so
    `patching.generic_activation_patch(..., activation_name="kv_latent")` works. A hook that
    fires only with a switch on says which, when it is missing."""

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
            match = _BLOCK_ALIAS.fullmatch(name)
            if match is not None and f"blocks.{match[1]}.attn.hook_{match[2]}" in self.cache_dict:
                return self.cache_dict[f"blocks.{match[1]}.attn.hook_{match[2]}"]
            switch = _SWITCHED.get(name.rsplit(".", 1)[-1])
            if switch is not None and not getattr(self.model.cfg, switch):
                raise KeyError(
                    f"{name} fires only with cfg.{switch} on: call model.set_{switch}(True) "
                    "before run_with_cache"
                ) from None
            raise


def _identity(x: Tensor) -> Tensor:
    return x


class TransformerLensModel:
    """LabModel's side of `transformer_lens.model_protocol.TransformerLensModel`."""

    def setup(self) -> None:
        super().setup()
        for i, block in enumerate(self.blocks):
            for name in _ATTN_HOOKS:
                hook = getattr(block.attn, f"hook_{name}", None)
                if isinstance(hook, HookPoint):  # reachable by name, never cached twice
                    self.mod_dict[f"blocks.{i}.hook_{name}"] = hook

    def _compile_out_hook_points(self) -> None:
        """Replace every HookPoint by a plain identity function (`LabModel(hook_points=False)`,
        which the benchmark uses to measure what idle hooks cost)."""
        for name, module in list(self.named_modules()):
            if isinstance(module, HookPoint):
                parent_name, _, attr = name.rpartition(".")
                parent = self.get_submodule(parent_name) if parent_name else self
                delattr(parent, attr)
                object.__setattr__(parent, attr, _identity)

    def _sync_cfg(self) -> None:
        """cfg.device / cfg.dtype (TransformerLens's names) follow the parameters."""
        self.cfg.__dict__["_device"] = self.embed.weight.device
        self.cfg.__dict__["_dtype"] = self.embed.weight.dtype

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        out = super()._apply(fn, recurse)
        if getattr(self, "rope_cos", None) is not None:  # fp32 on the new device, never garbage
            self._build_rope_tables(self.rope_cos.device)  # (`to_empty`) nor bf16 (`.to(dtype)`)
        self._sync_cfg()
        return out

    # ------------------------------------------------------------------ switches
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Fire `blocks.{i}.attn.hook_result` [b, pos, head, d_model], each head's write
        (hook_z through its rows of W_O); the layer's output is their sum."""
        self.cfg.use_attn_result = bool(use_attn_result)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Give each head its own pre-ln1 copy of the residual for its query, key and value
        (`attn.hook_q_input`, `hook_k_input`, `hook_v_input`; see `AttentionWeights.fork`).
        Mutually exclusive with use_attn_in."""
        if use_split_qkv_input and self.cfg.use_attn_in:
            raise ValueError("use_attn_in is on: call set_use_attn_in(False) first")
        self.cfg.use_split_qkv_input = bool(use_split_qkv_input)

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """Give each head one pre-ln1 copy of the residual for query, key and value
        (`attn.hook_attn_in`). Mutually exclusive with use_split_qkv_input."""
        if use_attn_in and self.cfg.use_split_qkv_input:
            raise ValueError("use_split_qkv_input is on: call set_use_split_qkv_input(False) first")
        self.cfg.use_attn_in = bool(use_attn_in)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Fire `blocks.{i}.hook_mlp_in` [b, pos, d_model] on the MLP's own copy of resid_mid
        (before ln2): patching it changes the MLP's input and nothing else."""
        self.cfg.use_hook_mlp_in = bool(use_hook_mlp_in)

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
        from labkit.data.tokenizer import EOT

        if tokenizer.eos_token is None and EOT in tokenizer.get_vocab():
            tokenizer.eos_token = EOT
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer

    def _need_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError(
                "this LabModel has no tokenizer: load checkpoints with labkit.run.load "
                "(which attaches the run's tokenizer.json) or call model.set_tokenizer(path)"
            )
        return self.tokenizer

    @property
    def bos_token_id(self) -> int:
        """The token `prepend_bos` puts first: the one the model trained every sequence to start
        with (`cfg.bos_token_id`), else <|endoftext|>, the token every training document follows."""
        if self.cfg.bos_token_id is not None:
            return self.cfg.bos_token_id
        return self._need_tokenizer().eos_token_id

    def to_tokens(
        self,
        input: str | list[str] | Tensor,
        prepend_bos: bool | None = None,
        padding_side: str | None = "right",
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> Tensor:
        """Text -> tokens [batch, pos] (a list of strings is padded with <|endoftext|> on
        `padding_side`); token tensors pass through. `prepend_bos` starts every sequence with
        `bos_token_id`: by default (None) when the model was trained with one (`cfg.bos_token_id`,
        an attention sink), as TransformerLens's `cfg.default_prepend_bos`; `True` prepends it
        (<|endoftext|>, labkit's document separator, for a model without one) and `False` never
        does."""
        if isinstance(input, Tensor):
            tokens = input if input.dim() == 2 else input.reshape(1, -1)
        else:
            tok = self._need_tokenizer()
            texts = [input] if isinstance(input, str) else list(input)
            ids = [tok.encode(t, add_special_tokens=False) for t in texts]
            if self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos:
                ids = [[self.bos_token_id, *x] for x in ids]
            if truncate:
                ids = [x[: self.cfg.max_seq_len] for x in ids]
            width = max(len(x) for x in ids)
            pad = [tok.pad_token_id] if tok.pad_token_id is not None else [0]
            rows = [
                x + pad * (width - len(x)) if padding_side != "left" else pad * (width - len(x)) + x
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
        tokens = self.to_tokens(string, prepend_bos=False, move_to_device=False)[0]
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

    # ------------------------------------------------------------------ parameters
    def tl_parameters(self) -> dict[str, Tensor]:
        """TransformerLens's parameter dictionary (what `SVDInterpreter` reads): `embed.W_E`,
        `unembed.W_U`, `unembed.b_U`, `blocks.{i}.attn.W_Q|W_K|W_V|W_O|b_Q|b_K|b_V|b_O` (GQA
        also `_W_K`, `_W_V`, the stored KV heads), `blocks.{i}.mlp.W_in|W_gate|W_out|b_in|b_out`
        and, while the residual norms keep their gains (before `fold_layer_norm`),
        `blocks.{i}.ln1.w`, `ln2.w` and `ln_final.w`. MLA's per-head matrices are the effective
        ones `MLAWeights` defines. Views of the parameters, not copies."""
        params = {"embed.W_E": self.W_E, "unembed.W_U": self.W_U, "unembed.b_U": self.b_U}
        gains = self.cfg.normalization_type == "RMS"
        for i, block in enumerate(self.blocks):
            names = ["W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"]
            names += ["_W_K", "_W_V"] if self.cfg.attention == "gqa" else []
            params |= {f"blocks.{i}.attn.{n}": getattr(block.attn, n) for n in names}
            for n in ("W_in", "W_gate", "W_out", "b_in", "b_out"):
                params[f"blocks.{i}.mlp.{n}"] = getattr(block.mlp, n)
            if gains:
                params[f"blocks.{i}.ln1.w"] = block.ln1.weight
                params[f"blocks.{i}.ln2.w"] = block.ln2.weight
        if gains:
            params["ln_final.w"] = self.ln_final.weight
        return params

    def tl_named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        return iter(self.tl_parameters().items())

    # ------------------------------------------------------------------ weight processing
    @torch.no_grad()
    def fold_layer_norm(self) -> Any:
        """Fold each residual RMSNorm's gain into the weights that read it, in place (RMSNorm's
        `fold_ln`): ln1's into the attention's input projections (GQA q/k/v_proj; MLA q_down or
        q_proj, and kv_down), ln2's into gate/up_proj, ln_final's into the unembedding (untied
        from the embedding first, `cfg.tie_embeddings` then False). The gains become 1 and
        `cfg.normalization_type` "RMSPre"; the logits are unchanged. MLA's latent norms keep their
        gains (they sit inside the heads, not on the residual stream). Returns the model."""
        for block in self.blocks:
            for ln, readers in ((block.ln1, block.attn.ln1_readers()),
                                (block.ln2, (block.mlp.gate_proj, block.mlp.up_proj))):  # fmt: skip
                for linear in readers:
                    linear.weight.mul_(ln.weight)
                ln.weight.fill_(1.0)
        if self.unembed.weight is self.embed.weight:
            self.unembed.weight = nn.Parameter(self.embed.weight.detach().clone())
            self.cfg.tie_embeddings = False
        self.unembed.weight.mul_(self.ln_final.weight)
        self.ln_final.weight.fill_(1.0)
        self.cfg.normalization_type = "RMSPre"
        return self

    @torch.no_grad()
    def process_weights_(
        self,
        fold_ln: bool = True,
        center_writing_weights: bool = False,
        center_unembed: bool = False,
        fold_value_biases: bool = False,
        refactor_factored_attn_matrices: bool = False,
    ) -> Any:
        """TransformerLens's weight processing, in place, as far as it applies to an RMSNorm model
        without biases: `fold_ln` (`fold_layer_norm`) and `center_unembed` (W_U minus its mean
        over the vocabulary: every logit of a position moves by the same amount, so
        probabilities are unchanged). `center_writing_weights` needs a norm that removes the mean
        and `fold_value_biases` biases: skipped with a warning, as TransformerLens does for RMS
        models; `refactor_factored_attn_matrices` does not hold under RoPE and raises. To keep
        the original, process a copy: `processed_copy(...)`. Returns the model."""
        if refactor_factored_attn_matrices:
            raise ValueError(
                "refactor_factored_attn_matrices assumes no rotary embeddings; LabModel uses RoPE"
            )
        if center_writing_weights:
            warnings.warn(
                "center_writing_weights skipped: RMSNorm does not remove the mean", stacklevel=2
            )
        if fold_ln:
            self.fold_layer_norm()
        if center_unembed:
            if self.unembed.weight is self.embed.weight:
                self.unembed.weight = nn.Parameter(self.embed.weight.detach().clone())
                self.cfg.tie_embeddings = False
            self.unembed.weight.sub_(self.unembed.weight.mean(0, keepdim=True))
        return self

    def processed_copy(self, **kwargs: Any) -> Any:
        """A copy of the model with `process_weights_(**kwargs)` applied (the same tokenizer);
        the model itself is left as it was."""
        tokenizer, self.tokenizer = self.tokenizer, None
        try:
            twin = copy.deepcopy(self)
        finally:
            self.tokenizer = tokenizer
        twin.tokenizer = tokenizer
        return twin.process_weights_(**kwargs)

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        input: str | list[str] | Tensor = "",
        max_new_tokens: int = 10,
        stop_at_eos: bool = True,
        eos_token_id: int | None = None,
        do_sample: bool = True,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        repetition_penalty: float = 1.0,
        use_past_kv_cache: bool = True,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        return_type: str | None = "input",
        verbose: bool = False,
        *,
        generator: torch.Generator | None = None,
    ) -> str | list[str] | Tensor:
        """TransformerLens's `generate`: continue a text, a list of texts or tokens [batch, pos]
        by up to `max_new_tokens` tokens, with the KV cache (`use_past_kv_cache`; MLA caches only
        c_kv and the RoPE key).

        Greedy when `do_sample=False` or `temperature=0`; otherwise sampled as TransformerLens
        samples (`repetition_penalty`, `temperature`, `freq_penalty`, then `top_k` or `top_p`),
        from `generator` if given. `stop_at_eos`: a row stops at `eos_token_id` (default: the
        tokenizer's, <|endoftext|>) and is padded with it; all rows stopped ends decoding. Texts
        are tokenized by `to_tokens(prepend_bos=...)` and generated one at a time (LabModel has
        no padding mask). `return_type`: "input" (the input's kind), "str" (decoded without
        special tokens, as TransformerLens decodes) or "tokens" (prompt + continuation, several
        texts left-padded). `verbose` shows a progress bar (TransformerLens's default is on,
        labkit's off). `padding_side` is accepted for TransformerLens's signature."""
        if return_type not in ("input", "str", "tokens"):
            raise ValueError(f"return_type must be 'input', 'str' or 'tokens', got {return_type!r}")
        if top_k is not None and top_k <= 0:
            raise ValueError(f"top_k must be > 0, got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if temperature < 0 or freq_penalty < 0 or repetition_penalty <= 0:
            raise ValueError(
                "temperature and freq_penalty must be >= 0 and repetition_penalty > 0, got "
                f"{temperature}, {freq_penalty}, {repetition_penalty}"
            )
        device = self.cfg.device
        if isinstance(input, Tensor):
            prompts = [(input if input.dim() == 2 else input.reshape(1, -1)).to(device)]
        else:
            texts = [input] if isinstance(input, str) else list(input)
            prompts = [self.to_tokens(t, prepend_bos=prepend_bos, truncate=False) for t in texts]
        if stop_at_eos and eos_token_id is None and self.tokenizer is not None:
            eos_token_id = self.tokenizer.eos_token_id
        greedy = not do_sample or temperature == 0
        from tqdm.auto import tqdm

        bar = tqdm(total=max_new_tokens * len(prompts), desc="generate", disable=not verbose)

        def pick(logits: Tensor, tokens: Tensor) -> Tensor:
            bar.update()
            if greedy:
                return logits.argmax(dim=-1)
            return sample_next(logits, tokens, temperature, top_k, top_p, freq_penalty,
                               repetition_penalty, generator)  # fmt: skip

        eos = eos_token_id if stop_at_eos else None
        outs = [self.decode(p, max_new_tokens, pick, eos, use_past_kv_cache) for p in prompts]
        bar.close()
        if return_type == "str" or (return_type == "input" and not isinstance(input, Tensor)):
            tok = self._need_tokenizer()
            decoded = [
                tok.decode(row.tolist(), skip_special_tokens=True) for o in outs for row in o
            ]
            return decoded if isinstance(input, list) or len(decoded) > 1 else decoded[0]
        if len(outs) == 1:
            return outs[0]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(o.shape[1] for o in outs)
        return torch.cat([F.pad(o, (width - o.shape[1], 0), value=pad) for o in outs])


def sample_next(
    logits: Tensor,
    tokens: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    freq_penalty: float = 0.0,
    repetition_penalty: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token per row from logits [batch, vocab] after `tokens` [batch, pos], in
    TransformerLens's order: the repetition penalty (positive logits of seen tokens divided by it,
    negative ones multiplied), temperature (0: greedy), the frequency penalty (times each token's
    count so far), then top-k, or else top-p (the smallest set of tokens whose probability
    reaches top_p), and a draw from `generator`."""
    if repetition_penalty != 1.0:
        seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, tokens, True)
        penalised = torch.where(
            logits > 0, logits / repetition_penalty, logits * repetition_penalty
        )
        logits = torch.where(seen, penalised, logits)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if freq_penalty > 0:
        counts = torch.zeros_like(logits).scatter_add_(1, tokens, torch.ones_like(tokens).float())
        logits = logits - freq_penalty * counts
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    elif top_p is not None and top_p < 1:
        ordered, order = logits.sort(dim=-1, descending=True)
        drop = ordered.softmax(dim=-1).cumsum(dim=-1) > top_p
        drop[:, 1:] = drop[:, :-1].clone()  # keep the token that crosses top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


__all__ = [
    "AttentionWeights",
    "AttnInput",
    "GQAWeights",
    "LabActivationCache",
    "MLAWeights",
    "MLPWeights",
    "TransformerLensModel",
    "sample_next",
]
