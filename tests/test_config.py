import pytest
import torch

from labkit.config import PRESETS, ModelConfig, params_gap
from labkit.model import LabModel


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(d_model=100, n_heads=3), "d_model"),
        (dict(attention="gqa", n_heads=4, n_kv_heads=3), "n_kv_heads"),
        (dict(attention="gqa", n_heads=4, n_kv_heads=8), "n_kv_heads"),
        (dict(attention="gqa", d_model=36, n_heads=4), "head_dim"),
        (dict(attention="mla", qk_rope_head_dim=7), "qk_rope_head_dim"),
        (dict(attention="attn"), "attention"),
        (dict(attn_impl="flash"), "attn_impl"),
        (dict(d_ff=0), "d_ff"),
        (dict(vocab_size=-1), "vocab_size"),
        (dict(kv_lora_rank=0), "kv_lora_rank"),
        (dict(q_lora_rank=-2), "q_lora_rank"),
        (dict(rope_theta=0.0), "rope_theta"),
    ],
)
def test_invalid_configs_name_the_field(changes, field):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}"):
        ModelConfig(**changes)


def test_unknown_field_lists_allowed():
    with pytest.raises(ValueError, match="unknown ModelConfig field.*'n_kv_head'.*allowed"):
        ModelConfig.from_dict({"n_kv_head": 2})


def test_round_trip_dict():
    cfg = ModelConfig.preset("small-gqa")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_presets_cover_the_study():
    expected = {"tiny-mla", "tiny-gqa", "mla-1.3b", "gqa-1.3b"}
    for size in ("small", "medium", "large", "xlarge"):
        expected |= {f"{size}-mla", f"{size}-gqa"}
    assert set(PRESETS) == expected
    with pytest.raises(ValueError, match="unknown preset.*available"):
        ModelConfig.preset("huge-mla")


def test_seed_shapes():
    seed002 = {"small": (256, 4, 4, 1024), "medium": (384, 6, 8, 1536)}
    seed002 |= {"large": (512, 8, 8, 2048), "xlarge": (768, 12, 12, 3072)}
    for size, shape in seed002.items():
        c = ModelConfig.preset(f"{size}-mla")
        assert (c.d_model, c.n_layers, c.n_heads, c.d_ff) == shape
    big = ModelConfig.preset("mla-1.3b")
    assert (big.d_model, big.n_layers, big.n_heads, big.d_ff) == (2048, 26, 16, 8192)
    assert (big.kv_lora_rank, big.qk_nope_head_dim, big.qk_rope_head_dim) == (512, 96, 32)
    assert big.v_head_dim == 128 and big.q_lora_rank == 0
    twin = ModelConfig.preset("gqa-1.3b")
    assert twin.attention == "gqa" and twin.n_kv_heads == 4 and twin.head_dim == 128


@pytest.mark.parametrize("size", ["tiny", "small", "medium", "large", "xlarge", "1.3b"])
def test_twins_are_parameter_matched(size):
    names = ("mla-1.3b", "gqa-1.3b") if size == "1.3b" else (f"{size}-mla", f"{size}-gqa")
    mla, gqa = (ModelConfig.preset(n) for n in names)
    assert params_gap(mla, gqa) <= 0.02


def test_tiny_is_laptop_sized():
    for name in ("tiny-mla", "tiny-gqa"):
        assert 1_000_000 <= ModelConfig.preset(name).num_params() <= 3_000_000


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_analytic_param_count_matches_the_model(name):
    cfg = ModelConfig.preset(name)
    with torch.device("meta"):
        model = LabModel(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params()
    embedding = cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
    assert cfg.num_params(non_embedding=True) == cfg.num_params() - embedding


def test_kv_cache_bytes():
    mla = ModelConfig.preset("mla-1.3b")
    assert mla.kv_cache_bytes_per_token() == 26 * (512 + 32) * 2
    gqa = ModelConfig.preset("gqa-1.3b")
    assert gqa.kv_cache_bytes_per_token() == 26 * 2 * 4 * 128 * 2


def test_flops_per_token_is_about_6n():
    cfg = ModelConfig.preset("mla-1.3b")
    n = cfg.num_params(non_embedding=True) + cfg.vocab_size * cfg.d_model
    flops = cfg.flops_per_token(2048)
    assert 6 * n * 0.99 < flops < 6 * n * 1.1
