"""Model configuration: the field names every part of labkit relies on, validation, and presets.

`ModelConfig` is the contract of DESIGN.md ("Model contract"). The trainer's TrainConfig/DataConfig
join this module when the trainer lands.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ATTENTION_KINDS = ("gqa", "mla")
# "auto": the fused path (the Triton kernels on CUDA, SDPA elsewhere) unless a hook needs the
# attention pattern; "sdpa" and "triton" force one; "eager" always materialises scores and pattern.
# The environment variable LABKIT_ATTN overrides the config (for comparisons).
ATTENTION_IMPLS = ("auto", "sdpa", "triton", "eager")


# ====================================================================== field rules
# a run name is one path component: runs/<name>-<time> can never point outside runs/
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=,+-]*")
OPTIMIZERS = ("adamw", "muon")
PRECISIONS = ("bf16", "fp32")
STRATEGIES = ("auto", "ddp", "fsdp")
BACKENDS = ("auto", "gloo", "nccl")
STAGE_SAMPLINGS = ("weights", "unimax", "alpha", "natural")
# Ranges and choices of every config field, declared once; `check_fields` is the one validator
# (types are checked from the dataclass defaults when a table is read, in `_build`). A number
# without a rule must be finite and >= 0. Keys are "section.field" ("" for the top level);
# "mixes.*.stages" stands for every stage of every mix. A rule with "when" applies only when the
# named sibling fields hold those values ("else": the rule otherwise).
FIELD_RULES: dict[str, dict[str, Any]] = {
    # ModelConfig (relations between fields are checked in ModelConfig.validate)
    "ModelConfig.vocab_size": {"min": 1},
    "ModelConfig.d_model": {"min": 1},
    "ModelConfig.n_layers": {"min": 1},
    "ModelConfig.n_heads": {"min": 1},
    "ModelConfig.d_ff": {"min": 1},
    "ModelConfig.max_seq_len": {"min": 1},
    "ModelConfig.attention": {"choices": ATTENTION_KINDS},
    "ModelConfig.attn_impl": {"choices": ATTENTION_IMPLS},
    "ModelConfig.n_kv_heads": {"min": 1, "when": {"attention": "gqa"}},
    "ModelConfig.head_dim": {"min": 1, "when": {"attention": "gqa"}},
    "ModelConfig.q_lora_rank": {"min": 0},  # 0 = full-rank query
    "ModelConfig.kv_lora_rank": {"min": 1, "when": {"attention": "mla"}},
    "ModelConfig.qk_nope_head_dim": {"min": 1, "when": {"attention": "mla"}},
    "ModelConfig.qk_rope_head_dim": {"min": 1, "when": {"attention": "mla"}},
    "ModelConfig.v_head_dim": {"min": 1, "when": {"attention": "mla"}},
    "ModelConfig.rope_theta": {"gt": 0},
    "ModelConfig.norm_eps": {"gt": 0},
    "ModelConfig.init_std": {"gt": 0},
    # TrainConfig
    "seed": {"min": 0},
    "train.tokens": {"min": 1},
    "train.seq_len": {"min": 2},
    "train.micro_batch": {"min": 1},
    "train.batch_tokens": {"min": 1},
    "train.lr": {"gt": 0, "max": 10},
    "train.min_lr_ratio": {"min": 0, "max": 1},
    "train.beta1": {"min": 0, "lt": 1},
    "train.beta2": {"min": 0, "lt": 1},
    "train.grad_clip": {"gt": 0},
    "train.muon_lr": {"gt": 0, "max": 10},
    "train.optimizer": {"choices": OPTIMIZERS},
    "train.precision": {"choices": PRECISIONS},
    "train.max_bad_steps": {"min": 1},
    "parallel.strategy": {"choices": STRATEGIES},
    "parallel.backend": {"choices": BACKENDS},
    "parallel.timeout_s": {"gt": 0},
    "checkpoint.resume_every_steps": {"min": 1},
    "checkpoint.keep_last": {"min": 1},
    "checkpoint.every_tokens": {"min": 1},
    "eval.every_steps": {"min": 1},
    "eval.tokens_per_split": {"min": 1},
    "log.every_steps": {"min": 1},
    # DataConfig
    "world.cities": {"min": 1},
    "world.people": {"min": 1},
    "world.organisations": {"min": 1},
    "world.elements": {"min": 1},
    "world.species": {"min": 1},
    "world.events": {"min": 1},
    "synthetic.documents": {"min": 1, "when": {"enabled": True}},
    "synthetic.eval_documents": {"min": 0},
    "retrieval.unanswerable": {"min": 0, "lt": 1},
    "curation.minhash_threshold": {"gt": 0, "max": 1},
    "curation.minhash_num_perm": {"min": 1},
    "curation.shingle_words": {"min": 1},
    "curation.contamination_ngram": {"min": 1},
    "curation.max_non_alnum": {"min": 0, "max": 1},
    "curation.max_digits": {"min": 0, "max": 1},
    "curation.max_url": {"min": 0, "max": 1},
    "curation.max_words": {"min": 1},
    "tokenizer.vocab_size": {"min": 300},  # 256 bytes + merges
    "tokenizer.min_frequency": {"min": 1},
    "shards.tokens_per_shard": {"min": 1},
    "mixes.*.stages.fraction": {"gt": 0, "max": 1},
    "mixes.*.stages.sampling": {"choices": STAGE_SAMPLINGS},
    "mixes.*.stages.alpha": {"gt": 0},
    "mixes.*.stages.max_epochs": {"gt": 0},
    "sources.*.eval_fraction": {"min": 0, "lt": 1},
}


def check_value(key: str, value: Any, rule: dict[str, Any]) -> None:
    """One value against its rule; a `ValueError` names the key, the bound and the value."""
    if "choices" in rule:
        if value not in rule["choices"]:
            raise ValueError(f"{key} must be one of {rule['choices']}, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return  # not a number: its type was checked where the table was read
    if not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    bounds = (("min", ">=", lambda a, b: a >= b), ("gt", ">", lambda a, b: a > b),
              ("max", "<=", lambda a, b: a <= b), ("lt", "<", lambda a, b: a < b))  # fmt: skip
    for name, sign, ok in bounds:
        if name in rule and not ok(value, rule[name]):
            raise ValueError(f"{key} must be {sign} {rule[name]}, got {value!r}")


def check_fields(obj: Any, section: str = "", rule_section: str | None = None) -> None:
    """Every field of a config dataclass (and of its nested sections) against FIELD_RULES."""
    rule_section = section if rule_section is None else rule_section
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{section}.{f.name}" if section else f.name
        rule_key = f"{rule_section}.{f.name}" if rule_section else f.name
        if dataclasses.is_dataclass(value):
            check_fields(value, key, rule_key)
            continue
        rule = FIELD_RULES.get(rule_key, {"min": 0})
        when = rule.get("when", {})
        if any(getattr(obj, k) != v for k, v in when.items()):
            rule = rule.get("else", {"min": 0})
        check_value(key, value, rule)


@dataclass
class ModelConfig:
    """Shape of a LabModel. GQA reads `n_kv_heads`/`head_dim`; MLA reads the LoRA ranks and the
    nope/rope/v head dims. Invalid combinations raise `ValueError` naming the field."""

    vocab_size: int = 4096
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    attention: str = "mla"
    # GQA: 1 = multi-query, n_heads = multi-head. head_dim None means d_model // n_heads.
    n_kv_heads: int = 2
    head_dim: int | None = None
    # MLA (DeepSeek-V2/V3). q_lora_rank 0 = full-rank query; kv_lora_rank is d_c, the cached latent.
    q_lora_rank: int = 0
    kv_lora_rank: int = 32
    qk_nope_head_dim: int = 24
    qk_rope_head_dim: int = 8
    v_head_dim: int = 32
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    attn_impl: str = "auto"
    init_std: float = 0.02
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if self.head_dim is None and isinstance(self.n_heads, int) and self.n_heads > 0:
            self.head_dim = self.d_model // self.n_heads
        self.validate()

    # ------------------------------------------------------------------ validation
    def _check_types(self) -> None:
        """Every field has its declared type (int, float, str or bool; head_dim may be None)."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), f.type
            if f.name == "head_dim" and value is None:
                continue
            if kind in ("int", "int | None"):
                ok = isinstance(value, int) and not isinstance(value, bool)
                what = "an integer"
            elif kind == "float":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                ok = ok and math.isfinite(value)
                what = "a finite number"
            elif kind == "bool":
                ok, what = isinstance(value, bool), "true or false"
            else:
                ok, what = isinstance(value, str), "a string"
            if not ok:
                raise ValueError(f"ModelConfig.{f.name} must be {what}, got {value!r}")

    def validate(self) -> None:
        """Types, then ranges and choices (FIELD_RULES["ModelConfig.*"]), then the relations
        between fields that no single range expresses."""
        self._check_types()
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

    # ------------------------------------------------------------------ TransformerLens's names
    # TransformerLens's utilities (ActivationCache, patching, head_detector) read `model.cfg` by
    # TransformerLens's field names. They are derived here, never stored, so LabModel keeps one
    # config: nothing below is serialised and nothing can drift from the fields above.
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

    # The norms keep their gains (they are not folded into the next matrices), and the model has
    # no biases, no absolute positions, no parallel attention/MLP and no split q/k/v inputs.
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
    default_prepend_bos = False
    tokenizer_prepends_bos = False
    n_devices = 1

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
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: invalid TOML: {err}") from err


# ====================================================================== data configuration
def _check_keys(section: str, data: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(
            f"unknown key(s) {[f'{section}.{k}' if section else k for k in unknown]}; "
            f"allowed in {section or 'the top level'}: {sorted(allowed)}"
        )


def _build(cls: type, section: str, data: dict[str, Any]) -> Any:
    """A dataclass from a TOML table: unknown keys and wrongly typed values name the key."""
    if not isinstance(data, dict):
        raise ValueError(f"[{section}] must be a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(section, data, set(fields))
    kwargs = {}
    for key, value in data.items():
        default = getattr(cls(), key) if key in fields else None
        expected = type(default)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ValueError(f"{section}.{key} must be true or false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{section}.{key} must be a number, got {value!r}")
            if isinstance(default, int) and isinstance(value, float) and not value.is_integer():
                raise ValueError(f"{section}.{key} must be an integer, got {value!r}")
            value = expected(value)
        if isinstance(default, str) and not isinstance(value, str):
            raise ValueError(f"{section}.{key} must be a string, got {value!r}")
        if isinstance(default, (list, tuple)) and not isinstance(value, (list, tuple)):
            raise ValueError(f"{section}.{key} must be a list, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


@dataclass
class WorldSizes:
    cities: int = 40
    people: int = 240
    organisations: int = 50
    elements: int = 30
    species: int = 40
    events: int = 60


@dataclass
class SyntheticSection:
    enabled: bool = True  # false: no world-generated documents (own text only)
    documents: int = 2000
    eval_documents: int = 200  # split by domain into eval "general" and "domain" (stem)


@dataclass
class RetrievalSection:
    enabled: bool = True
    documents: int = 400
    eval_documents: int = 80
    unanswerable: float = 0.2


@dataclass
class ControlSection:
    enabled: bool = True


@dataclass
class CodeSection:
    enabled: bool = True
    files: int = 60
    eval_files: int = 6
    max_chars: int = 20000


@dataclass
class RecordsSection:
    """Record logs with one-off random codes (labkit.data.records): the copy-heavy source. Off by
    default; the miniature study's corpus turns it on."""

    enabled: bool = False
    documents: int = 2000
    eval_documents: int = 200


@dataclass
class ProseSection:
    """Real English prose shipped with Python (labkit.data.prose), curated like a user source."""

    enabled: bool = True
    documents: int = 0  # 0 = all
    eval_fraction: float = 0.1


@dataclass
class SourceSection:
    """A user text source: a local file/folder (json, jsonl, txt, parquet) or a Hub dataset."""

    enabled: bool = True
    path: str = ""
    hub: str = ""
    text_field: str = "text"
    limit: int = 0  # 0 = all
    eval_fraction: float = 0.05
    quality: bool = True  # apply seed 003's prose heuristics


@dataclass
class CurationSection:
    minhash_threshold: float = 0.8
    minhash_num_perm: int = 128
    shingle_words: int = 5
    contamination_ngram: int = 13
    contamination_files: list = field(default_factory=list)  # eval task texts (jsonl/txt)
    max_non_alnum: float = 0.25
    max_digits: float = 0.15
    max_url: float = 0.20
    mean_word_len: list = field(default_factory=lambda: [3.0, 10.0])
    min_words: int = 50
    max_words: int = 100_000


@dataclass
class TokenizerSection:
    vocab_size: int = 4096
    min_frequency: int = 2


@dataclass
class ShardSection:
    tokens_per_shard: int = 1_000_000


@dataclass
class StageSection:
    name: str = "stage"
    fraction: float = 1.0
    sampling: str = "weights"
    weights: dict = field(default_factory=dict)
    alpha: float = 1.3
    max_epochs: float = 4.0


@dataclass
class DataConfig:
    """`labkit data build --config FILE`: what to generate, curate, tokenize and mix."""

    name: str = "data"
    seed: int = 1234
    world: WorldSizes = field(default_factory=WorldSizes)
    synthetic: SyntheticSection = field(default_factory=SyntheticSection)
    retrieval: RetrievalSection = field(default_factory=RetrievalSection)
    control: ControlSection = field(default_factory=ControlSection)
    code: CodeSection = field(default_factory=CodeSection)
    prose: ProseSection = field(default_factory=ProseSection)
    records: RecordsSection = field(default_factory=RecordsSection)
    sources: dict = field(default_factory=dict)  # name -> SourceSection
    curation: CurationSection = field(default_factory=CurationSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    shards: ShardSection = field(default_factory=ShardSection)
    total_tokens: int = 0  # mix budget; 0 = every train token once
    mixes: dict = field(default_factory=dict)  # name -> list[StageSection]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        sections = {
            "world": WorldSizes,
            "synthetic": SyntheticSection,
            "retrieval": RetrievalSection,
            "control": ControlSection,
            "code": CodeSection,
            "prose": ProseSection,
            "records": RecordsSection,
            "curation": CurationSection,
            "tokenizer": TokenizerSection,
            "shards": ShardSection,
        }
        allowed = set(sections) | {"name", "seed", "sources", "total_tokens", "mixes"}
        _check_keys("", data, allowed)
        kwargs: dict[str, Any] = {
            k: _build(v, k, data[k]) for k, v in sections.items() if k in data
        }
        for key in ("name", "seed", "total_tokens"):
            if key in data:
                kwargs[key] = data[key]
        if not isinstance(kwargs.get("seed", 0), int) or not isinstance(
            kwargs.get("total_tokens", 0), int
        ):
            raise ValueError("seed and total_tokens must be integers")
        reserved = {"synthetic", "retrieval", "control", "code", "prose", "records"}
        sources = {}
        for name, table in data.get("sources", {}).items():
            if name in reserved:
                raise ValueError(f"sources.{name}: {sorted(reserved)} are built-in source names")
            src = _build(SourceSection, f"sources.{name}", table)
            if bool(src.path) == bool(src.hub):
                raise ValueError(f"sources.{name}: give exactly one of `path` or `hub`")
            sources[name] = src
        kwargs["sources"] = sources
        mixes = {}
        for mix_name, table in data.get("mixes", {}).items():
            _check_keys(f"mixes.{mix_name}", table, {"stages"})
            stages = [
                _build(StageSection, f"mixes.{mix_name}.stages[{i}]", s)
                for i, s in enumerate(table.get("stages", []))
            ]
            if not stages:
                raise ValueError(f"mixes.{mix_name} needs at least one [[mixes.{mix_name}.stages]]")
            mixes[mix_name] = stages
        kwargs["mixes"] = mixes
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> DataConfig:
        return cls.from_dict(read_toml(path, "data config"))

    def validate(self) -> None:
        check_fields(self)  # sources and mixes are dicts: checked one by one below
        for name, src in self.sources.items():
            check_fields(src, f"sources.{name}", "sources.*")
        for mix, stages in self.mixes.items():
            for i, stage in enumerate(stages):
                check_fields(stage, f"mixes.{mix}.stages[{i}]", "mixes.*.stages")

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
    dir: str = "data/demo"
    config: str = "pretrain/configs/data/demo.toml"  # built into `dir` when it has no manifest
    mix: str = "dense"
    eval_splits: list = field(default_factory=list)  # empty = every split in the manifest


@dataclass
class TrainSection:
    tokens: int = 3_000_000  # duration
    seq_len: int = 256
    micro_batch: int = 8
    batch_tokens: int = 16_384  # target global tokens per optimizer step
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    optimizer: str = "adamw"
    muon_lr: float = 0.02
    precision: str = "bf16"
    compile: bool = False
    max_bad_steps: int = 5
    seq_len_schedule: list = field(default_factory=list)  # [[tokens, seq_len], ...]
    peak_flops: float = 0.0  # per device; 0 = from the GPU table (MFU null on CPU)


@dataclass
class ParallelSection:
    strategy: str = "auto"  # auto: DDP below 300M parameters, FSDP2 above
    backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU
    # a rank that stops answering fails the group after this long (a step, an eval or a
    # checkpoint must fit in it; 30 minutes is PyTorch's default)
    timeout_s: float = 600.0


@dataclass
class CheckpointSection:
    resume_every_steps: int = 50
    keep_last: int = 2
    log_spaced_until_step: int = 64  # milestones after steps 1, 2, 4, ... up to this
    every_tokens: int = 1_000_000  # then a milestone every this many tokens, then the final one
    # a milestone of the initial weights (tokens_000000000000): the step-0 baseline of probes, the
    # random-init floor of CKA, the start of every curve
    save_init: bool = False


@dataclass
class EvalSection:
    every_steps: int = 50
    tokens_per_split: int = 32_768


@dataclass
class LogSection:
    every_steps: int = 10
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "labkit"


@dataclass
class DebugSection:
    """Fault injection for tests: non-finite losses, and a worker killing itself (SIGKILL) at a
    step on the first attempt only, as a crashed node would under `torchrun --max-restarts`."""

    nan_at_steps: list = field(default_factory=list)
    kill_at_step: int = 0


@dataclass
class TrainConfig:
    """`pretrain/run.py --config FILE`: model, data, methodology, parallelism, checkpoints."""

    name: str = "run"
    seed: int = 1234
    model: dict = field(default_factory=lambda: {"preset": "tiny-mla"})
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: EvalSection = field(default_factory=EvalSection)
    log: LogSection = field(default_factory=LogSection)
    debug: DebugSection = field(default_factory=DebugSection)

    SECTIONS = {
        "data": DataSection,
        "train": TrainSection,
        "parallel": ParallelSection,
        "checkpoint": CheckpointSection,
        "eval": EvalSection,
        "log": LogSection,
        "debug": DebugSection,
    }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        _check_keys("", data, set(cls.SECTIONS) | {"name", "seed", "model"})
        kwargs: dict[str, Any] = {
            k: _build(v, k, data[k]) for k, v in cls.SECTIONS.items() if k in data
        }
        if "name" in data:
            if not isinstance(data["name"], str):
                raise ValueError(f"name must be a string, got {data['name']!r}")
            kwargs["name"] = data["name"]
        if "seed" in data:
            if not isinstance(data["seed"], int) or isinstance(data["seed"], bool):
                raise ValueError(f"seed must be an integer, got {data['seed']!r}")
            kwargs["seed"] = data["seed"]
        if "model" in data:
            model = dict(data["model"])
            allowed = {f.name for f in dataclasses.fields(ModelConfig)} | {"preset"}
            _check_keys("model", model, allowed)
            kwargs["model"] = model
        cfg = cls(**kwargs)
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

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The model: a preset with overrides; vocab from the data's tokenizer unless given, and
        max_seq_len at least the longest sequence of the schedule."""
        overrides = {k: v for k, v in self.model.items() if k != "preset"}
        base = ModelConfig.preset(self.model["preset"]) if "preset" in self.model else ModelConfig()
        overrides.setdefault("vocab_size", vocab_size)
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
