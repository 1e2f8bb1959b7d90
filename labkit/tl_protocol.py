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
                           tokens_to_residual_directions, accumulated_bias
    LabActivationCache     ActivationCache whose MLA latent hooks answer to short names

The config's TransformerLens names (`d_head`, `d_mlp`, `n_ctx`, `normalization_type`, ...) are
`labkit.config.TransformerLensNames`, kept beside the fields they derive from.

Per head, as TransformerLens names them: W_Q/W_K [head, d_model, d_qk], W_V [head, d_model,
d_head], W_O [head, d_head, d_model]; they act on the layer's attention input, ln1's output (its
gain included: labkit never folds norms into weights). No biases: every b_* is zeros.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from torch import Tensor
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.FactoredMatrix import FactoredMatrix
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_act_name


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
class AttentionWeights:
    """What GQA and MLA share: the output projection per head, QK and OV, zero biases."""

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


class GQAWeights(AttentionWeights):
    """GQA's per-head weights: each query head's key/value head repeated over its group."""

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


class TransformerLensModel:
    """LabModel's side of `transformer_lens.model_protocol.TransformerLensModel`."""

    def setup(self) -> None:
        super().setup()
        for i, block in enumerate(self.blocks):
            for name in ("kv_latent", "q_latent", "k_rope"):
                hook = getattr(block.attn, f"hook_{name}", None)
                if isinstance(hook, HookPoint):  # reachable by name, never cached twice
                    self.mod_dict[f"blocks.{i}.hook_{name}"] = hook

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

    def to_tokens(
        self,
        input: str | list[str] | Tensor,
        prepend_bos: bool | None = None,
        padding_side: str = "right",
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> Tensor:
        """Text -> tokens [batch, pos] (a list of strings is padded with <|endoftext|> on
        `padding_side`); token tensors pass through. `prepend_bos` starts every sequence with the
        model's first token: by default (None) when the model was trained with one
        (`cfg.bos_token_id`, an attention sink), as TransformerLens's `default_prepend_bos`;
        `True` prepends it (<|endoftext|>, labkit's document separator, for a model without
        one) and `False` never does."""
        if isinstance(input, Tensor):
            tokens = input if input.dim() == 2 else input.reshape(1, -1)
        else:
            tok = self._need_tokenizer()
            texts = [input] if isinstance(input, str) else list(input)
            ids = [tok.encode(t, add_special_tokens=False) for t in texts]
            if self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos:
                bos = self.cfg.bos_token_id
                ids = [[tok.eos_token_id if bos is None else bos, *x] for x in ids]
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


__all__ = [
    "AttentionWeights",
    "GQAWeights",
    "LabActivationCache",
    "MLAWeights",
    "MLPWeights",
    "TransformerLensModel",
]
