"""Configuration: the model's shape (`ModelConfig` and its presets), the data set a build makes
(`DataConfig`) and a training run (`TrainConfig`).

Every field is declared once, where it is defined: its type (the annotation), its default, its
range or choices and one line of documentation, through `setting(...)`:

    lr: float = setting(3e-3, gt=0, max=10, doc="peak learning rate")

`check_fields` is the one validator and `from_table` the one reader of TOML tables; both read
those declarations, and so does the generated configuration reference (`config_reference`).
Errors are one line that names the key and what it allows. A number without a declared range
must be finite and >= 0.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import sys
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from labkit.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ATTENTION_KINDS = ("gqa", "mla")
# "auto": the fused path (the Triton kernels on CUDA, SDPA elsewhere) unless a hook needs the
# attention pattern; "sdpa" and "triton" force one; "eager" always materialises scores and pattern.
ATTENTION_IMPLS = ("auto", "sdpa", "triton", "eager")
OPTIMIZERS = ("adamw", "muon")
PRECISIONS = ("bf16", "fp32")
STRATEGIES = ("auto", "ddp", "fsdp")
BACKENDS = ("auto", "gloo", "nccl")
STAGE_SAMPLINGS = ("weights", "unimax", "alpha", "natural")
# a run name is one path component: runs/<name>-<time> can never point outside runs/
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=,+-]*")


# ====================================================================== declaring a field
def setting(
    default: Any = MISSING,
    *,
    doc: str,
    factory: Any = None,
    min: float | None = None,  # noqa: A002 (the names read as the bounds they are)
    gt: float | None = None,
    max: float | None = None,  # noqa: A002
    lt: float | None = None,
    choices: tuple | None = None,
    when: dict[str, Any] | None = None,
) -> Any:
    """A config field: its default (or `factory` for a mutable one), its range (`min`/`gt`,
    `max`/`lt`) or `choices`, and a one-line `doc`. `when` limits the range to configs whose
    sibling fields hold those values (e.g. MLA's ranks apply only to MLA models)."""
    rule = {k: v for k, v in (("min", min), ("gt", gt), ("max", max), ("lt", lt),
                              ("choices", choices)) if v is not None}  # fmt: skip
    metadata = {"doc": doc, "rule": rule, "when": when or {}}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _describe_type(hint: Any) -> str:
    """How a reference page and an error name a field's type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        named = " or ".join(_describe_type(a) for a in args if a is not type(None))
        return named + (" (or none)" if type(None) in args else "")
    if origin is list:
        return f"list of {_describe_type(args[0])}" if args else "list"
    if origin is dict:
        return f"table of {_describe_type(args[1])}" if args else "table"
    if _is_config(hint):
        return f"[{hint.__name__}]"
    names = {int: "integer", float: "number", bool: "true/false", str: "string", dict: "table"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


# ====================================================================== checking
def check_value(key: str, value: Any, rule: dict[str, Any]) -> None:
    """One value against its rule; a `ValueError` names the key, the bound and the value."""
    if "choices" in rule:
        if value not in rule["choices"]:
            raise ValueError(f"{key} must be one of {rule['choices']}, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return  # not a number: its type was checked first
    if not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    bounds = (("min", ">=", lambda a, b: a >= b), ("gt", ">", lambda a, b: a > b),
              ("max", "<=", lambda a, b: a <= b), ("lt", "<", lambda a, b: a < b))  # fmt: skip
    for name, sign, ok in bounds:
        if name in rule and not ok(value, rule[name]):
            raise ValueError(f"{key} must be {sign} {rule[name]}, got {value!r}")


def check_type(key: str, value: Any, hint: Any) -> Any:
    """`value` as a field of type `hint` (an integral float becomes an int); a `ValueError`
    names the key and the type otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        if len(arms) > 1:  # e.g. `bool | str`: the first arm the value fits
            for arm in arms:
                try:
                    return check_type(key, value, arm)
                except ValueError:
                    continue
            raise ValueError(f"{key} must be {_describe_type(hint)}, got {value!r}")
        (hint,) = arms
        origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
    elif hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} must be a number, got {value!r}")
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"{key} must be an integer, got {value!r}")
            return int(value)
        return float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string, got {value!r}")
    elif (hint is list or origin is list) and not isinstance(value, (list, tuple)):
        raise ValueError(f"{key} must be a list, got {value!r}")
    elif (hint is dict or origin is dict) and not isinstance(value, dict):
        raise ValueError(f"{key} must be a table, got {value!r}")
    return value


def _rule(obj: Any, f: dataclasses.Field) -> dict[str, Any]:
    when = f.metadata.get("when", {})
    if any(getattr(obj, k) != v for k, v in when.items()):
        return {"min": 0}
    return f.metadata.get("rule") or {"min": 0}


def check_fields(obj: Any, section: str = "") -> None:
    """Every field of a config (and of its nested sections, tables of sections and lists of
    sections) against its declared type and range."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{section}.{f.name}" if section else f.name
        hint = hints[f.name]
        args = typing.get_args(hint)
        if dataclasses.is_dataclass(value):
            check_fields(value, key)
        elif typing.get_origin(hint) is dict and args and _nested(args[1]):
            for name, item in value.items():
                _check_nested(item, f"{key}.{name}")
        elif typing.get_origin(hint) is list and args and _is_config(args[0]):
            for i, item in enumerate(value):
                check_fields(item, f"{key}[{i}]")
        else:
            setattr(obj, f.name, check_type(key, value, hint))
            check_value(key, getattr(obj, f.name), _rule(obj, f))


def _nested(hint: Any) -> bool:
    args = typing.get_args(hint)
    return _is_config(hint) or (typing.get_origin(hint) is list and _is_config(args[0]))


def _check_nested(item: Any, key: str) -> None:
    if isinstance(item, list):
        for i, x in enumerate(item):
            check_fields(x, f"{key}[{i}]")
    else:
        check_fields(item, key)


def _check_keys(section: str, data: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(
            f"unknown key(s) {[f'{section}.{k}' if section else k for k in unknown]}; "
            f"allowed in {section or 'the top level'}: {sorted(allowed)}"
        )


def from_table(cls: type, table: Any, section: str = "") -> Any:
    """A config section from a TOML table: unknown keys, wrongly typed values and values out of
    range name the key. Nested sections, tables of sections (`[sources.NAME]`) and lists of
    sections (`[[...stages]]`) are read by their declared types."""
    if not isinstance(table, dict):
        raise ValueError(f"[{section}] must be a table, got {type(table).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(section, table, set(fields))
    hints = _hints(cls)
    kwargs = {}
    for key, value in table.items():
        hint, name = hints[key], f"{section}.{key}" if section else key
        args = typing.get_args(hint)
        if _is_config(hint):
            kwargs[key] = from_table(hint, value, name)
        elif typing.get_origin(hint) is dict and args and _nested(args[1]):
            check_type(name, value, dict)
            kwargs[key] = {k: _from_nested(args[1], v, f"{name}.{k}") for k, v in value.items()}
        elif typing.get_origin(hint) is list and args and _is_config(args[0]):
            check_type(name, value, list)
            kwargs[key] = [from_table(args[0], v, f"{name}[{i}]") for i, v in enumerate(value)]
        else:
            kwargs[key] = check_type(name, value, hint)
    return cls(**kwargs)


def _from_nested(hint: Any, value: Any, key: str) -> Any:
    if _is_config(hint):
        return from_table(hint, value, key)
    check_type(key, value, list)
    (item,) = typing.get_args(hint)
    return [from_table(item, v, f"{key}[{i}]") for i, v in enumerate(value)]


def declared_settings(cls: type, section: str = "") -> list[tuple[str, str, Any, str, str]]:
    """(key, type, default, allowed values, doc) of every declared field of a config, nested
    sections flattened: what the configuration reference lists."""
    rows = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{section}.{f.name}" if section else f.name
        hint = hints[f.name]
        if _is_config(hint):
            rows += declared_settings(hint, key)
            continue
        args = typing.get_args(hint)
        if typing.get_origin(hint) is dict and args and _nested(args[1]):
            inner = args[1] if _is_config(args[1]) else typing.get_args(args[1])[0]
            suffix = ".NAME" if _is_config(args[1]) else ".NAME.stages[]"
            rows.append((key, _describe_type(hint), "{}", "", f.metadata.get("doc", "")))
            rows += declared_settings(inner, key + suffix)
            continue
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = None
        rule, when = f.metadata.get("rule") or {}, f.metadata.get("when") or {}
        allowed = ", ".join(
            [f"one of {', '.join(map(str, rule['choices']))}"] if "choices" in rule else
            [f"{sign} {rule[k]}" for k, sign in (("min", ">="), ("gt", ">"), ("max", "<="),
                                                  ("lt", "<")) if k in rule]
        )  # fmt: skip
        if not rule and hints[f.name] in (int, float):
            allowed = ">= 0"
        if when and allowed:
            allowed += " (when " + ", ".join(f"{k} = {v!r}" for k, v in when.items()) + ")"
        rows.append((key, _describe_type(hint), default, allowed, f.metadata.get("doc", "")))
    return rows


def config_reference() -> str:
    """The configuration reference (Markdown) of the trainer's and the data build's configs,
    generated from the declarations above."""
    out = []
    for title, cls, note in (
        ("Training: `pretrain/run.py --config FILE`", TrainConfig,
         "`[model]` takes `preset` and any `ModelConfig` field below (it overrides the preset)."),
        ("Model: `[model]` of a training config, `ModelConfig`", ModelConfig, ""),
        ("Data: `labkit data build --config FILE`", DataConfig,
         "`[sources.NAME]` adds a text source of your own; `[[mixes.NAME.stages]]` a curriculum "
         "stage of mix NAME."),
    ):  # fmt: skip
        out += [f"## {title}", ""] + ([note, ""] if note else [])
        out += ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        for key, kind, default, allowed, doc in declared_settings(cls):
            shown = "—" if default is None else f"`{default!r}`".replace("|", "\\|")
            out.append(f"| `{key}` | {kind} | {shown} | {allowed} | {doc} |")
        out.append("")
    return "\n".join(out)


# ====================================================================== the model
class TransformerLensNames:
    """TransformerLens's config names, derived from ModelConfig's own fields and never stored:
    TransformerLens's utilities (ActivationCache, patching, head_detector) read `model.cfg` by
    these names; nothing here is serialised, so nothing can drift from the fields. The model has
    no biases, no absolute positions and no parallel attention/MLP.

    `SWITCHES` are TransformerLens's run-time switches, off by default: set them on a model's
    config (`model.cfg.use_attn_result = True`) or with its `set_use_*` methods; a model built
    from a config copies them. `use_attn_result` fires `attn.hook_result` (each head's write);
    `use_split_qkv_input` / `use_attn_in` give every head its own pre-ln1 copy of the residual
    (`attn.hook_q_input`/`k_input`/`v_input` or `attn.hook_attn_in`); `use_hook_mlp_in` fires
    `hook_mlp_in` on the MLP's copy of the residual; `default_prepend_bos` is `to_tokens`'s
    default (derived from `bos_token_id` until set). `normalization_type` reads "RMSPre" once
    `fold_layer_norm` has folded the gains."""

    SWITCHES = (
        "use_attn_result",
        "use_split_qkv_input",
        "use_attn_in",
        "use_hook_mlp_in",
        "_default_prepend_bos",  # where a set default_prepend_bos is kept
    )
    normalization_type = "RMS"
    final_rms = True
    positional_embedding_type = "rotary"
    act_fn = "silu"
    gated_mlp = True
    attn_only = False
    parallel_attn_mlp = False
    use_attn_result = False
    use_split_qkv_input = False
    use_attn_in = False
    use_hook_mlp_in = False
    tokenizer_prepends_bos = False
    n_devices = 1

    @property
    def default_prepend_bos(self) -> bool:
        """TransformerLens's switch: a model trained with a first token (`bos_token_id`) gets it
        prepended by `to_tokens` unless asked otherwise; setting it (`cfg.default_prepend_bos =
        True`) overrides that for this config."""
        return self.__dict__.get("_default_prepend_bos", self.bos_token_id is not None)

    @default_prepend_bos.setter
    def default_prepend_bos(self, value: bool) -> None:
        self.__dict__["_default_prepend_bos"] = bool(value)

    @property
    def d_head(self) -> int:
        """Width of hook_z and of each head's rows of W_O (MLA: v_head_dim; W_Q/W_K are
        qk_head_dim wide)."""
        return self.value_head_dim

    @property
    def d_mlp(self) -> int:
        return self.d_ff

    @property
    def d_vocab(self) -> int:
        return self.vocab_size

    @property
    def d_vocab_out(self) -> int:
        return self.vocab_size

    @property
    def n_ctx(self) -> int:
        return self.max_seq_len

    @property
    def n_key_value_heads(self) -> int | None:
        """GQA: the K/V heads of hook_k/hook_v. MLA: None (hook_k/hook_v have n_heads heads)."""
        return self.n_kv_heads if self.attention == "gqa" else None

    @property
    def rotary_dim(self) -> int:
        return self.rope_dim

    @property
    def eps(self) -> float:
        return self.norm_eps

    @property
    def model_name(self) -> str:
        return self.name

    @property
    def original_architecture(self) -> str:
        return f"LabModel-{self.attention.upper()}"

    @property
    def device(self) -> Any:
        """Where the model that owns this config lives (a torch.device; LabModel keeps it
        current)."""
        return self.__dict__.get("_device", "cpu")

    @property
    def dtype(self) -> Any:
        """The torch dtype of the owning model's parameters (LabModel keeps it current)."""
        if "_dtype" in self.__dict__:
            return self.__dict__["_dtype"]
        import torch

        return torch.float32


MLA = {"attention": "mla"}
GQA = {"attention": "gqa"}


@dataclass
class ModelConfig(TransformerLensNames):
    """Shape of a LabModel. GQA reads `n_kv_heads`/`head_dim`; MLA reads the LoRA ranks and the
    nope/rope/v head dims. Invalid combinations raise `ValueError` naming the field."""

    vocab_size: int = setting(
        4096, min=1, doc="tokens in the vocabulary (from the data set's tokenizer)"
    )
    d_model: int = setting(128, min=1, doc="width of the residual stream")
    n_layers: int = setting(4, min=1, doc="transformer blocks")
    n_heads: int = setting(4, min=1, doc="query heads per attention layer")
    d_ff: int = setting(512, min=1, doc="hidden width of the SwiGLU MLP")
    attention: str = setting("mla", choices=ATTENTION_KINDS, doc="MLA (DeepSeek) or its GQA twin")
    n_kv_heads: int = setting(
        2, min=1, when=GQA, doc="GQA: key/value heads (1 = MQA, n_heads = MHA)"
    )
    head_dim: int | None = setting(
        None, min=1, when=GQA, doc="GQA: width of a head (none: d_model / n_heads)"
    )
    q_lora_rank: int = setting(0, min=0, doc="MLA: rank of the query latent (0 = full-rank query)")
    kv_lora_rank: int = setting(
        32, min=1, when=MLA, doc="MLA: width of the cached latent c_kv (d_c)"
    )
    qk_nope_head_dim: int = setting(
        24, min=1, when=MLA, doc="MLA: query/key width per head without RoPE"
    )
    qk_rope_head_dim: int = setting(8, min=1, when=MLA, doc="MLA: width of the shared RoPE key")
    v_head_dim: int = setting(32, min=1, when=MLA, doc="MLA: value width per head")
    max_seq_len: int = setting(256, min=1, doc="longest sequence (RoPE tables, KV cache)")
    rope_theta: float = setting(10000.0, gt=0, doc="RoPE base")
    norm_eps: float = setting(1e-6, gt=0, doc="RMSNorm epsilon of the residual norms")
    tie_embeddings: bool = setting(True, doc="unembedding shares the embedding matrix")
    attn_impl: str = setting(
        "auto",
        choices=ATTENTION_IMPLS,
        doc="attention: auto = Triton on CUDA, SDPA elsewhere; eager materialises the pattern",
    )
    init_std: float = setting(
        0.02, gt=0, doc="std of the normal initialisation (residual outputs / sqrt(2 n_layers))"
    )
    bos_token_id: int | None = setting(
        None,
        min=0,
        doc="the token every training sequence started with (an attention sink); to_tokens, "
        "evaluation, the analyses and the export prepend it. None: sequences start anywhere",
    )
    name: str = field(default="custom", compare=False, metadata={"doc": "the preset's name"})

    def __post_init__(self) -> None:
        if self.head_dim is None and isinstance(self.n_heads, int) and self.n_heads > 0:
            self.head_dim = self.d_model // self.n_heads
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Types, ranges and choices as declared, then the relations between fields that no
        single range expresses."""
        check_fields(self, "ModelConfig")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"ModelConfig.d_model ({self.d_model}) must be divisible by "
                f"n_heads ({self.n_heads})"
            )
        if self.attention == "gqa":
            if self.n_kv_heads > self.n_heads or self.n_heads % self.n_kv_heads:
                raise ValueError(
                    f"ModelConfig.n_kv_heads ({self.n_kv_heads}) must divide n_heads "
                    f"({self.n_heads}) and be at most n_heads"
                )
            if self.head_dim % 2:
                raise ValueError(
                    f"ModelConfig.head_dim ({self.head_dim}) must be even: RoPE rotates pairs"
                )
        else:
            if self.kv_lora_rank > self.d_model:
                raise ValueError(
                    f"ModelConfig.kv_lora_rank ({self.kv_lora_rank}) must be at most d_model "
                    f"({self.d_model}): the latent c_kv compresses the residual stream"
                )
            if self.q_lora_rank > self.d_model:
                raise ValueError(
                    f"ModelConfig.q_lora_rank ({self.q_lora_rank}) must be at most d_model "
                    f"({self.d_model})"
                )
            if self.qk_rope_head_dim % 2:
                raise ValueError(
                    f"ModelConfig.qk_rope_head_dim ({self.qk_rope_head_dim}) must be even: "
                    "RoPE rotates pairs"
                )

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(
                f"unknown ModelConfig field(s) {unknown}; allowed fields: {sorted(allowed)}"
            )
        return cls(**data)

    def copy(self) -> ModelConfig:
        """A copy of the fields and of TransformerLens's switches set on this config."""
        out = ModelConfig.from_dict(self.to_dict())
        out.__dict__.update({k: v for k, v in self.__dict__.items() if k in self.SWITCHES})
        return out

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated); head_dim is re-derived unless given."""
        data = self.to_dict()
        if "head_dim" not in changes and ("d_model" in changes or "n_heads" in changes):
            data["head_dim"] = None
        data.update(changes)
        return ModelConfig.from_dict(data)

    # ------------------------------------------------------------------ derived shapes
    @property
    def qk_head_dim(self) -> int:
        """Width of each head's query/key dot product."""
        if self.attention == "mla":
            return self.qk_nope_head_dim + self.qk_rope_head_dim
        return self.head_dim

    @property
    def value_head_dim(self) -> int:
        return self.v_head_dim if self.attention == "mla" else self.head_dim

    @property
    def rope_dim(self) -> int:
        """Number of dimensions RoPE rotates per query/key head."""
        return self.qk_rope_head_dim if self.attention == "mla" else self.head_dim

    def attention_params(self) -> int:
        d, h = self.d_model, self.n_heads
        if self.attention == "gqa":
            return (
                d * h * self.head_dim
                + 2 * d * self.n_kv_heads * self.head_dim
                + h * self.head_dim * d
            )
        q = (
            d * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * h * self.qk_head_dim
            if self.q_lora_rank
            else d * h * self.qk_head_dim
        )
        kv_down = d * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank  # + its norm
        kv_up = self.kv_lora_rank * h * (self.qk_nope_head_dim + self.v_head_dim)
        return q + kv_down + kv_up + h * self.v_head_dim * d

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count, analytic (tests check it against the built model). Non-embedding
        excludes the token embedding and the unembedding, as in Kaplan et al. (2020)."""
        per_layer = self.attention_params() + 3 * self.d_model * self.d_ff + 2 * self.d_model
        body = self.n_layers * per_layer + self.d_model  # + final norm
        if non_embedding:
            return body
        embed = self.vocab_size * self.d_model
        return body + embed + (0 if self.tie_embeddings else embed)

    def kv_cache_values_per_token(self) -> int:
        """Values cached per token over all layers: MLA caches c_kv and the shared RoPE key only."""
        if self.attention == "mla":
            per_layer = self.kv_lora_rank + self.qk_rope_head_dim
        else:
            per_layer = 2 * self.n_kv_heads * self.head_dim
        return self.n_layers * per_layer

    def kv_cache_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """KV-cache bytes per token (default bf16)."""
        return self.kv_cache_values_per_token() * bytes_per_value

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward = 3x forward).

        Matmuls: 6 x (non-embedding matmul parameters + unembedding). Attention: QK^T and PV over
        the causal half of a `seq_len` context (FlashAttention skips the masked half, so counting
        it would inflate MFU)."""
        seq_len = seq_len or self.max_seq_len
        norm_params = self.n_layers * 2 * self.d_model + self.d_model
        if self.attention == "mla":
            norm_params += self.n_layers * (self.kv_lora_rank + self.q_lora_rank)
        matmul_params = self.num_params(non_embedding=True) - norm_params
        matmul_params += self.vocab_size * self.d_model
        attn_per_layer = 2 * self.n_heads * (self.qk_head_dim + self.value_head_dim) * seq_len / 2
        return 6.0 * matmul_params + 3.0 * self.n_layers * attn_per_layer

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; available presets: {sorted(PRESETS)}")
        return PRESETS[name].replace(name=name)

    @staticmethod
    def preset_names() -> list[str]:
        return list(PRESETS)


def _mla(name: str, d_model: int, n_layers: int, n_heads: int, d_ff: int, **kw: Any) -> ModelConfig:
    """MLA preset by seed 000's rules: d_c = d_model/4, RoPE dim = head/4, nope = head - rope."""
    head = d_model // n_heads
    rope = kw.pop("qk_rope_head_dim", head // 4)
    return ModelConfig(
        name=name,
        attention="mla",
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        d_ff=d_ff,
        kv_lora_rank=kw.pop("kv_lora_rank", d_model // 4),
        qk_rope_head_dim=rope,
        qk_nope_head_dim=head - rope,
        v_head_dim=head,
        **kw,
    )


def matched_d_ff(target: ModelConfig, twin: ModelConfig, multiple_of: int = 8) -> int:
    """The d_ff (a multiple of `multiple_of`) that brings `twin`'s parameter count closest to
    `target`'s: how each GQA preset is made a fair twin of its MLA sibling."""
    per_unit = 3 * twin.d_model * twin.n_layers  # SwiGLU: three d_model x d_ff matrices per layer
    gap = target.num_params() - twin.replace(d_ff=multiple_of).num_params()
    units = max(1, round(gap / (per_unit * multiple_of)) + 1)
    return units * multiple_of


def _gqa_twin(mla: ModelConfig, name: str, n_kv_heads: int, multiple_of: int) -> ModelConfig:
    twin = mla.replace(name=name, attention="gqa", n_kv_heads=n_kv_heads)
    return twin.replace(d_ff=matched_d_ff(mla, twin, multiple_of))


def _build_presets() -> dict[str, ModelConfig]:
    presets: dict[str, ModelConfig] = {}
    # (MLA name, GQA twin name), d_model, n_layers, n_heads, d_ff, vocab, max_seq_len, tied,
    # the twin's KV heads, and the multiple its matched d_ff is rounded to.
    table = [
        (("tiny-mla", "tiny-gqa"), 128, 4, 4, 512, 4096, 256, True, 2, 8),
        # seed 002's four architectures
        (("small-mla", "small-gqa"), 256, 4, 4, 1024, 8192, 512, True, 2, 8),
        (("medium-mla", "medium-gqa"), 384, 6, 8, 1536, 8192, 512, True, 2, 8),
        (("large-mla", "large-gqa"), 512, 8, 8, 2048, 8192, 512, True, 2, 8),
        (("xlarge-mla", "xlarge-gqa"), 768, 12, 12, 3072, 8192, 512, True, 4, 8),
        # seed 000 section 3.2: d_c 512, RoPE 32, nope 96, v 128; 4096 allows the seq-len curriculum
        (("mla-1.3b", "gqa-1.3b"), 2048, 26, 16, 8192, 32000, 4096, False, 4, 64),
    ]
    for (mla_name, gqa_name), d, n_layers, n_heads, d_ff, vocab, seq, tied, kv_heads, mult in table:
        mla = _mla(
            mla_name,
            d,
            n_layers,
            n_heads,
            d_ff,
            vocab_size=vocab,
            max_seq_len=seq,
            tie_embeddings=tied,
        )
        presets[mla_name] = mla
        presets[gqa_name] = _gqa_twin(mla, gqa_name, kv_heads, mult)
    return presets


PRESETS: dict[str, ModelConfig] = _build_presets()


def params_gap(a: ModelConfig, b: ModelConfig) -> float:
    """Relative difference of two parameter counts, |a - b| / max(a, b)."""
    na, nb = a.num_params(), b.num_params()
    return abs(na - nb) / max(na, nb)


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A config file as a dict: `path`, or the shipped copy of a path written as in a checkout
    (pretrain/configs/...); a missing file or bad TOML is one line naming the file."""
    from labkit.resources import find

    path = find(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} not found")
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory: pass a TOML file inside it")
    try:
        table = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte {err.start}): a config is a TOML file"
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from err
    if not table:
        # An empty file would otherwise be a full default run (or data set) with no notice.
        start = "data/template.toml" if what.startswith("data") else "demo.toml"
        raise ConfigError(
            f"{what} {path} is empty (or only comments): it sets nothing, and labkit does not "
            f"guess; write the settings you want, e.g. from a copy of pretrain/configs/{start}"
        )
    return table


# ====================================================================== data configuration
@dataclass
class WorldSizes:
    """How many entities of each kind the synthetic world holds."""

    cities: int = setting(40, min=1, doc="cities")
    people: int = setting(240, min=1, doc="people")
    organisations: int = setting(50, min=1, doc="organisations")
    elements: int = setting(30, min=1, doc="chemical elements")
    species: int = setting(40, min=1, doc="species")
    events: int = setting(60, min=1, doc="historical events")


ENABLED = {"enabled": True}


@dataclass
class SyntheticSection:
    enabled: bool = setting(True, doc="world-generated documents (false: own text only)")
    documents: int = setting(2000, min=1, when=ENABLED, doc="training documents")
    eval_documents: int = setting(
        200, min=0, doc='held out, split by domain into eval "general" and "domain" (stem)'
    )


@dataclass
class RetrievalSection:
    enabled: bool = setting(True, doc="question-answering documents over a passage")
    documents: int = setting(400, doc="training documents")
    eval_documents: int = setting(80, doc="held-out documents")
    unanswerable: float = setting(
        0.2, min=0, lt=1, doc="share of questions the passage does not answer"
    )


@dataclass
class ControlSection:
    enabled: bool = setting(True, doc="the density-only control corpus (same words, no facts)")


@dataclass
class CodeSection:
    enabled: bool = setting(True, doc="Python source shipped with the interpreter")
    files: int = setting(60, doc="training files")
    eval_files: int = setting(6, doc="held-out files")
    max_chars: int = setting(20000, doc="longest file kept")


@dataclass
class RecordsSection:
    """Record logs with one-off random codes (labkit.data.records): the copy-heavy source. Off by
    default; the miniature study's corpus turns it on."""

    enabled: bool = setting(False, doc="record logs whose codes are copied later in the log")
    documents: int = setting(2000, doc="training documents")
    eval_documents: int = setting(200, doc="held-out documents")


@dataclass
class ProseSection:
    """Real English prose shipped with Python (labkit.data.prose), curated like a user source."""

    enabled: bool = setting(True, doc="English prose (module documentation)")
    documents: int = setting(0, doc="documents kept (0 = all)")
    eval_fraction: float = setting(0.1, min=0, lt=1, doc="share held out")


@dataclass
class SourceSection:
    """A user text source: a local file/folder (json, jsonl, txt, parquet) or a Hub dataset."""

    enabled: bool = setting(True, doc="include this source")
    path: str = setting("", doc="a local file or folder (json, jsonl, txt, parquet)")
    hub: str = setting("", doc="a Hugging Face dataset name (needs a network)")
    text_field: str = setting("text", doc="the field holding each document's text")
    limit: int = setting(0, doc="documents read (0 = all)")
    eval_fraction: float = setting(0.05, min=0, lt=1, doc="share held out (by a hash of each id)")
    quality: bool = setting(True, doc="apply the prose quality heuristics")


@dataclass
class CurationSection:
    minhash_threshold: float = setting(
        0.8, gt=0, max=1, doc="Jaccard similarity that makes a near-duplicate"
    )
    minhash_num_perm: int = setting(128, min=1, doc="MinHash permutations")
    shingle_words: int = setting(5, min=1, doc="words per shingle")
    contamination_ngram: int = setting(13, min=1, doc="n-gram length of the contamination check")
    contamination_files: list = setting(
        factory=list, doc="eval task texts (jsonl/txt) no training document may overlap"
    )
    max_non_alnum: float = setting(
        0.25, min=0, max=1, doc="quality: largest share of non-alphanumeric characters"
    )
    max_digits: float = setting(0.15, min=0, max=1, doc="quality: largest share of digits")
    max_url: float = setting(0.20, min=0, max=1, doc="quality: largest share of URL characters")
    mean_word_len: list = setting(
        factory=lambda: [3.0, 10.0], doc="quality: allowed mean word length [low, high]"
    )
    min_words: int = setting(50, doc="quality: fewest words")
    max_words: int = setting(100_000, min=1, doc="quality: most words")


@dataclass
class TokenizerSection:
    vocab_size: int = setting(4096, min=300, doc="byte-level BPE vocabulary (256 bytes + merges)")
    min_frequency: int = setting(2, min=1, doc="fewest occurrences of a merge")


@dataclass
class ShardSection:
    tokens_per_shard: int = setting(1_000_000, min=1, doc="tokens per shard file")


@dataclass
class StageSection:
    name: str = setting("stage", doc="the stage's name (logged)")
    fraction: float = setting(1.0, gt=0, max=1, doc="share of the run's tokens")
    sampling: str = setting("weights", choices=STAGE_SAMPLINGS, doc="how sources are mixed")
    weights: dict = setting(factory=dict, doc="source -> weight (sampling = weights)")
    alpha: float = setting(1.3, gt=0, doc="temperature of alpha sampling")
    max_epochs: float = setting(4.0, gt=0, doc="most passes over a source (unimax)")


@dataclass
class DataConfig:
    """`labkit data build --config FILE`: what to generate, curate, tokenize and mix."""

    name: str = setting("data", doc="the data set's name")
    seed: int = setting(1234, min=0, doc="seed of the world and of every generator")
    world: WorldSizes = setting(factory=WorldSizes, doc="")
    synthetic: SyntheticSection = setting(factory=SyntheticSection, doc="")
    retrieval: RetrievalSection = setting(factory=RetrievalSection, doc="")
    control: ControlSection = setting(factory=ControlSection, doc="")
    code: CodeSection = setting(factory=CodeSection, doc="")
    prose: ProseSection = setting(factory=ProseSection, doc="")
    records: RecordsSection = setting(factory=RecordsSection, doc="")
    sources: dict[str, SourceSection] = setting(
        factory=dict, doc="text sources of your own, by name"
    )
    curation: CurationSection = setting(factory=CurationSection, doc="")
    tokenizer: TokenizerSection = setting(factory=TokenizerSection, doc="")
    shards: ShardSection = setting(factory=ShardSection, doc="")
    total_tokens: int = setting(0, doc="mix budget in tokens (0 = every training token once)")
    mixes: dict[str, list[StageSection]] = setting(
        factory=dict, doc="curriculum stages of each mix, by name"
    )

    BUILT_IN = ("synthetic", "retrieval", "control", "code", "prose", "records")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        data = dict(data)
        mixes = data.get("mixes", {})
        if isinstance(mixes, dict):  # [[mixes.NAME.stages]] -> NAME: [stages]
            data["mixes"] = {}
            for name, table in mixes.items():
                check_type(f"mixes.{name}", table, dict)
                _check_keys(f"mixes.{name}", table, {"stages"})
                if not table.get("stages"):
                    raise ValueError(f"mixes.{name} needs at least one [[mixes.{name}.stages]]")
                data["mixes"][name] = table["stages"]
        for name, table in (data.get("sources") or {}).items():
            if name in cls.BUILT_IN:
                raise ValueError(
                    f"sources.{name}: {sorted(cls.BUILT_IN)} are built-in source names"
                )
            if isinstance(table, dict) and bool(table.get("path")) == bool(table.get("hub")):
                raise ValueError(f"sources.{name}: give exactly one of `path` or `hub`")
        cfg = from_table(cls, data)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> DataConfig:
        return cls.from_dict(read_toml(path, "data config"))

    def validate(self) -> None:
        check_fields(self)

    def source_names(self) -> list[str]:
        names = ["synthetic"] if self.synthetic.enabled else []
        names += ["retrieval"] if self.retrieval.enabled else []
        # The control corpus is trimmed to the synthetic corpus's size: nothing without it.
        names += ["control"] if self.control.enabled and self.synthetic.enabled else []
        names += ["code"] if self.code.enabled else []
        names += ["prose"] if self.prose.enabled else []
        names += ["records"] if self.records.enabled else []
        names += sorted(n for n, s in self.sources.items() if s.enabled)
        if not names:
            raise ValueError(
                "every source is disabled: enable one of synthetic, retrieval, code, prose or a "
                "[sources.NAME] table"
            )
        return names

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ====================================================================== training configuration
@dataclass
class DataSection:
    dir: str = setting("data/demo", doc="the built data set to train on")
    config: str = setting(
        "pretrain/configs/data/demo.toml", doc="built into `dir` when it has no manifest"
    )
    mix: str = setting("dense", doc="the data set's mix to read")
    bos: bool = setting(
        False,
        doc="start every training window with the data set's <|endoftext|> (an attention sink; "
        "recorded as the model's bos_token_id)",
    )
    eval_splits: list = setting(factory=list, doc="held-out splits evaluated (empty = every split)")


@dataclass
class TrainSection:
    tokens: int = setting(3_000_000, min=1, doc="duration in tokens")
    seq_len: int = setting(256, min=2, doc="sequence length (the first stage's, with a schedule)")
    micro_batch: int = setting(8, min=1, doc="sequences per micro-batch and process")
    batch_tokens: int = setting(
        16_384, min=1, doc="target global tokens per optimizer step (gradient accumulation)"
    )
    lr: float = setting(3e-3, gt=0, max=10, doc="peak learning rate")
    min_lr_ratio: float = setting(
        0.1, min=0, max=1, doc="the cosine's floor, as a share of the peak"
    )
    warmup_steps: int = setting(20, doc="linear warmup steps")
    weight_decay: float = setting(0.1, doc="AdamW weight decay (matrices only)")
    beta1: float = setting(0.9, min=0, lt=1, doc="AdamW beta1")
    beta2: float = setting(0.95, min=0, lt=1, doc="AdamW beta2")
    grad_clip: float = setting(1.0, gt=0, doc="gradient-norm clip")
    optimizer: str = setting(
        "adamw", choices=OPTIMIZERS, doc="muon: Muon for the blocks' matrices, AdamW for the rest"
    )
    muon_lr: float = setting(0.02, gt=0, max=10, doc="Muon's learning rate")
    precision: str = setting(
        "bf16", choices=PRECISIONS, doc="bf16 autocast (fp32 master weights) or fp32"
    )
    compile: bool | str = setting(
        "auto",
        choices=(True, False, "auto"),
        doc="torch.compile the training step; auto: on CUDA, and on the CPU under bf16",
    )
    max_bad_steps: int = setting(5, min=1, doc="non-finite steps in a row that stop the run")
    seq_len_schedule: list = setting(
        factory=list, doc="[[tokens, seq_len], ...]: the sequence-length curriculum"
    )
    peak_flops: float = setting(
        0.0, doc="per-device peak FLOP/s for MFU (0 = from the GPU table; none on CPU)"
    )


@dataclass
class ParallelSection:
    strategy: str = setting(
        "auto", choices=STRATEGIES, doc="auto: DDP below 300M parameters, FSDP2 above"
    )
    backend: str = setting("auto", choices=BACKENDS, doc="auto: nccl on CUDA, gloo on CPU")
    # a rank that stops answering fails the group after this long (a step, an eval or a
    # checkpoint must fit in it; 30 minutes is PyTorch's default)
    timeout_s: float = setting(600.0, gt=0, doc="seconds before a silent rank fails the group")


@dataclass
class CheckpointSection:
    resume_every_steps: int = setting(50, min=1, doc="a resume state every this many steps")
    keep_last: int = setting(2, min=1, doc="resume states kept")
    log_spaced_until_step: int = setting(64, doc="milestones after steps 1, 2, 4, ... up to this")
    every_tokens: int = setting(
        1_000_000, min=1, doc="then a milestone every this many tokens, then the final one"
    )
    # the step-0 baseline of probes, the random-init floor of CKA, the start of every curve
    save_init: bool = setting(False, doc="a milestone of the initial weights (tokens_000000000000)")


@dataclass
class EvalSection:
    every_steps: int = setting(50, min=1, doc="held-out losses every this many steps")
    tokens_per_split: int = setting(32_768, min=1, doc="tokens evaluated per held-out split")


@dataclass
class LogSection:
    every_steps: int = setting(10, min=1, doc="a metrics.jsonl row every this many steps")
    tensorboard: bool = setting(True, doc="TensorBoard events")
    wandb: bool = setting(False, doc="Weights & Biases (optional; never stops a run)")
    wandb_project: str = setting("labkit", doc="the W&B project")


@dataclass
class DebugSection:
    """Fault injection for tests: non-finite losses, and a worker killing itself (SIGKILL) at a
    step on the first attempt only, as a crashed node would under `torchrun --max-restarts`."""

    nan_at_steps: list = setting(factory=list, doc="steps whose loss is made NaN")
    kill_at_step: int = setting(0, doc="the last rank dies at this step (0 = never)")


@dataclass
class TrainConfig:
    """`pretrain/run.py --config FILE`: model, data, methodology, parallelism, checkpoints."""

    name: str = setting("run", doc="the run's name: runs/<name>-<time>")
    seed: int = setting(1234, min=0, doc="seed of the weights, the data order and every RNG")
    model: dict = setting(
        factory=lambda: {"preset": "tiny-mla"}, doc="`preset` and ModelConfig overrides"
    )
    data: DataSection = setting(factory=DataSection, doc="")
    train: TrainSection = setting(factory=TrainSection, doc="")
    parallel: ParallelSection = setting(factory=ParallelSection, doc="")
    checkpoint: CheckpointSection = setting(factory=CheckpointSection, doc="")
    eval: EvalSection = setting(factory=EvalSection, doc="")
    log: LogSection = setting(factory=LogSection, doc="")
    debug: DebugSection = setting(factory=DebugSection, doc="")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        cfg = from_table(cls, data)
        allowed = {f.name for f in dataclasses.fields(ModelConfig)} | {"preset"}
        _check_keys("model", cfg.model, allowed)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] = ()) -> TrainConfig:
        data = read_toml(path, "training config")
        for item in overrides:
            apply_override(data, item)
        return cls.from_dict(data)

    def validate(self) -> None:
        check_fields(self)
        if not RUN_NAME.fullmatch(self.name):
            raise ValueError(
                f"name must start with a letter, digit or '_' and hold only those and "
                f"'.=,+-' (it names the run directory runs/<name>-<time>), got {self.name!r}"
            )
        t = self.train
        for i, item in enumerate(t.seq_len_schedule):
            if not (
                isinstance(item, list)
                and len(item) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
                and item[0] >= 0
                and item[1] >= 2
            ):
                raise ValueError(
                    f"train.seq_len_schedule[{i}] must be [tokens >= 0, seq_len >= 2] integers, "
                    f"got {item!r}"
                )
        for _, seq in self.seq_lens():
            if t.micro_batch * seq > t.batch_tokens:
                raise ValueError(
                    f"train.micro_batch ({t.micro_batch}) x seq_len ({seq}) = "
                    f"{t.micro_batch * seq:,} tokens exceeds train.batch_tokens "
                    f"({t.batch_tokens:,}): one micro-batch would be more than a whole step"
                )
        self.model_config(vocab_size=self.model.get("vocab_size", 4096))  # validates the model

    def seq_lens(self) -> list[tuple[int, int]]:
        """(from_tokens, seq_len) steps of the sequence-length curriculum, always starting at 0."""
        schedule = sorted((int(a), int(b)) for a, b in self.train.seq_len_schedule)
        if not schedule or schedule[0][0] > 0:
            schedule = [(0, self.train.seq_len)] + schedule
        return schedule

    def model_config(self, vocab_size: int, eot_id: int = 0) -> ModelConfig:
        """The model: a preset with overrides; vocab from the data's tokenizer unless given,
        max_seq_len at least the longest sequence of the schedule, and the data set's
        <|endoftext|> (`eot_id`) as bos_token_id when `data.bos`."""
        overrides = {k: v for k, v in self.model.items() if k != "preset"}
        base = ModelConfig.preset(self.model["preset"]) if "preset" in self.model else ModelConfig()
        overrides.setdefault("vocab_size", vocab_size)
        if self.data.bos:
            overrides.setdefault("bos_token_id", eot_id)
        longest = max(s for _, s in self.seq_lens())
        overrides.setdefault("max_seq_len", max(base.max_seq_len, longest))
        return base.replace(**overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def apply_override(data: dict[str, Any], item: str) -> None:
    """`section.key=value` (value parsed as TOML, else taken as a string) into a config dict."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        if "=" in item and item.split("=", 1)[0] in ("name", "seed"):
            key, raw = item.split("=", 1)
            data[key] = _parse_value(raw)
            return
        raise ValueError(f"--set expects section.key=value, got {item!r}")
    dotted, raw = item.split("=", 1)
    *sections, key = dotted.split(".")
    node = data
    for s in sections:
        node = node.setdefault(s, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {dotted}: {s} is not a section")
    node[key] = _parse_value(raw)


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
