"""To and from the Hugging Face format: GQA as `LlamaForCausalLM`, MLA as `DeepseekV3ForCausalLM`
with every layer dense (`first_k_dense_replace = n_layers`) and `rope_interleave = False`, since
LabModel rotates RoPE pairs in LLaMA's rotate-half layout.

An exported directory is plain safetensors + config.json (+ tokenizer files), so it loads offline in
`transformers`, TransformerLens's `TransformerBridge.boot_transformers(dir)`, nnsight and lm-eval.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from labkit.config import ModelConfig
from labkit.errors import CheckpointError
from labkit.fileio import check_output_dir, fsync_dir, load_safetensors, save_safetensors
from labkit.model import LabModel

HF_MODEL_TYPES = {"gqa": "llama", "mla": "deepseek_v3"}


def _name_map(cfg: ModelConfig) -> dict[str, str]:
    """LabModel parameter name -> Hugging Face parameter name."""
    names = {"embed.weight": "model.embed_tokens.weight", "ln_final.weight": "model.norm.weight"}
    if not cfg.tie_embeddings:
        names["unembed.weight"] = "lm_head.weight"
    if cfg.attention == "gqa":
        attn = {p: p for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    else:
        attn = {"kv_down": "kv_a_proj_with_mqa", "kv_norm": "kv_a_layernorm", "kv_up": "kv_b_proj"}
        attn["o_proj"] = "o_proj"
        if cfg.q_lora_rank:
            attn.update(q_down="q_a_proj", q_norm="q_a_layernorm", q_up="q_b_proj")
        else:
            attn["q_proj"] = "q_proj"
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}", f"model.layers.{i}"
        names[f"{ours}.ln1.weight"] = f"{theirs}.input_layernorm.weight"
        names[f"{ours}.ln2.weight"] = f"{theirs}.post_attention_layernorm.weight"
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names[f"{ours}.mlp.{proj}.weight"] = f"{theirs}.mlp.{proj}.weight"
        for a, b in attn.items():
            names[f"{ours}.attn.{a}.weight"] = f"{theirs}.self_attn.{b}.weight"
    return names


def hf_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """The `config.json` of the exported model."""
    common = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "hidden_act": "silu",
        "initializer_range": cfg.init_std,
        "bos_token_id": cfg.bos_token_id,  # the first token of every training sequence, if any
        "eos_token_id": None,
        "pad_token_id": None,
        "dtype": "float32",
    }
    if cfg.attention == "gqa":
        return {
            **common,
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "num_key_value_heads": cfg.n_kv_heads,
            "head_dim": cfg.head_dim,
            "mlp_bias": False,
        }
    return {
        **common,
        "model_type": "deepseek_v3",
        "architectures": ["DeepseekV3ForCausalLM"],
        "num_key_value_heads": cfg.n_heads,
        "q_lora_rank": cfg.q_lora_rank or None,
        "kv_lora_rank": cfg.kv_lora_rank,
        "qk_nope_head_dim": cfg.qk_nope_head_dim,
        "qk_rope_head_dim": cfg.qk_rope_head_dim,
        "v_head_dim": cfg.v_head_dim,
        "rope_interleave": False,
        # Dense everywhere: the MoE fields below are never instantiated.
        "first_k_dense_replace": cfg.n_layers,
        "moe_intermediate_size": cfg.d_ff,
        "n_routed_experts": 1,
        "n_shared_experts": 1,
        "num_experts_per_tok": 1,
        "n_group": 1,
        "topk_group": 1,
        "num_nextn_predict_layers": 0,
    }


def to_hf(
    model: LabModel, out_dir: str | Path, tokenizer: Any = None, overwrite: bool = False
) -> Path:
    """Write `model` as a Hugging Face directory: model.safetensors, config.json, and the
    tokenizer files — of `tokenizer` (a `tokenizers.Tokenizer`, a transformers tokenizer, or a
    path to a tokenizer.json), else of the model's own (`labkit.checkpoint.load` attaches it).
    With a tokenizer, config.json names <|endoftext|> as the end-of-text (and padding) token, so
    `AutoTokenizer` + `AutoModelForCausalLM` (or a `pipeline`) generate from the folder alone.
    `out_dir` must be missing, empty or an earlier export (labkit_config.json), unless
    `overwrite`; it is written beside and swapped in whole."""
    cfg = model.cfg
    out = Path(out_dir)
    check_finite(model)
    check_output_dir(out, "labkit_config.json", "export", overwrite)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty directory (e.g. a fresh temporary one) is simply replaced
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        state = model.state_dict()
        names = _name_map(cfg)
        tensors = {
            hf: state[ours].detach().to("cpu").contiguous().clone() for ours, hf in names.items()
        }
        save_safetensors(tensors, work / "model.safetensors", metadata={"format": "pt"})
        hf_config = hf_config_dict(cfg)
        tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        if tokenizer is not None:
            saved = _save_tokenizer(tokenizer, work, cfg.max_seq_len, cfg.bos_token_id)
            hf_config.update(eos_token_id=saved.eos_token_id, pad_token_id=saved.pad_token_id)
            generation = {"eos_token_id": saved.eos_token_id, "pad_token_id": saved.pad_token_id}
            (work / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        (work / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        (work / "labkit_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            out.rename(old)
        work.rename(out)
        fsync_dir(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def check_finite(model: LabModel) -> None:
    """Refuse a model whose weights hold NaN or inf (a diverged run): an export of it loads
    everywhere and generates nothing useful."""
    bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and
           not bool(torch.isfinite(t).all())]  # fmt: skip
    if bad:
        total = len(model.state_dict())
        raise CheckpointError(
            f"{len(bad)} of {total} weight tensors hold NaN or inf (first: {bad[0]}): the model "
            "is broken (diverged training?) and is not exported; export an earlier milestone"
        )


def _save_tokenizer(tokenizer: Any, out: Path, max_length: int, bos: int | None = None) -> Any:
    """Save a tokenizer as transformers reads it, with <|endoftext|> as eos and pad token; for a
    model trained with a first token (`bos`), that token as bos, which encoding with special
    tokens (transformers' default) puts before every text, as the model trained."""
    from transformers import PreTrainedTokenizerFast

    if isinstance(tokenizer, (str, Path)):
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer))
    elif not hasattr(tokenizer, "save_pretrained"):  # a raw `tokenizers.Tokenizer`
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    eos = "<|endoftext|>"
    if tokenizer.eos_token is None and eos in tokenizer.get_vocab():
        tokenizer.eos_token = eos
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = max_length
    if bos is not None:
        from tokenizers.processors import TemplateProcessing

        name = tokenizer.convert_ids_to_tokens(bos)
        tokenizer.bos_token = name
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{name} $A", pair=f"{name} $A $B", special_tokens=[(name, bos)]
        )
    tokenizer.save_pretrained(str(out))
    return tokenizer


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """ModelConfig for a Hugging Face config.json (Llama or dense DeepseekV3)."""
    model_type = hf.get("model_type")
    if model_type not in HF_MODEL_TYPES.values():
        raise ValueError(
            f"config.json has model_type {model_type!r}; labkit reads "
            f"{sorted(HF_MODEL_TYPES.values())}"
        )
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_parameters.rope_type {rope['rope_type']!r} is not supported")
    common = dict(
        bos_token_id=hf.get("bos_token_id"),
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    if model_type == "llama":
        return ModelConfig(
            attention="gqa",
            n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
            **common,
        )
    dense = hf.get("first_k_dense_replace", 0) >= hf["num_hidden_layers"]
    if not dense:
        raise ValueError("only dense DeepseekV3 models (first_k_dense_replace >= layers) load")
    if hf.get("rope_interleave", True):
        raise ValueError(
            "DeepseekV3 with rope_interleave=True is not supported; labkit rotates halves"
        )
    return ModelConfig(
        attention="mla",
        q_lora_rank=hf.get("q_lora_rank") or 0,
        kv_lora_rank=hf["kv_lora_rank"],
        qk_nope_head_dim=hf["qk_nope_head_dim"],
        qk_rope_head_dim=hf["qk_rope_head_dim"],
        v_head_dim=hf["v_head_dim"],
        **common,
    )


def from_hf(model_dir: str | Path, device: str | torch.device = "cpu") -> LabModel:
    """Read a Hugging Face directory written by `to_hf` (or any dense Llama / DeepseekV3 with the
    same conventions) back into a LabModel."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: is {model_dir} a Hugging Face model?")
    cfg = config_from_hf(json.loads(config_path.read_text()))
    tensors = _load_hf_tensors(model_dir)
    model = LabModel(cfg)
    state = {}
    for ours, hf in _name_map(cfg).items():
        if hf not in tensors:
            raise ValueError(f"{model_dir} has no tensor {hf!r} (needed for {ours})")
        state[ours] = tensors[hf]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (cfg.tie_embeddings and m == "unembed.weight")]
    if missing or unexpected:
        raise ValueError(f"weights do not fit the config: missing {missing}, extra {unexpected}")
    if (model_dir / "tokenizer.json").exists():
        from transformers import PreTrainedTokenizerFast

        model.set_tokenizer(PreTrainedTokenizerFast.from_pretrained(str(model_dir)))
    return model.to(device)


def _load_hf_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    single = model_dir / "model.safetensors"
    if single.exists():
        return load_safetensors(single, "export the milestone again")
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(load_safetensors(model_dir / shard, "export the milestone again"))
        return tensors
    raise FileNotFoundError(f"no model.safetensors(.index.json) in {model_dir}")
