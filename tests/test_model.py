import pytest
import torch
import torch.nn.functional as F
from conftest import odd_config

from labkit.config import ModelConfig
from labkit.model import KVCache, LabModel


def switched_hooks(cfg: ModelConfig, b: int, t: int, fork: str) -> dict[str, tuple]:
    """The hook points TransformerLens's switches turn on (`fork`: "split" or "attn_in")."""
    d, h = cfg.d_model, cfg.n_heads
    kv_heads = cfg.n_kv_heads if cfg.attention == "gqa" else h
    shapes = {}
    for i in range(cfg.n_layers):
        a = f"blocks.{i}.attn."
        shapes[a + "hook_result"] = (b, t, h, d)
        shapes[f"blocks.{i}.hook_mlp_in"] = (b, t, d)
        if fork == "split":
            shapes[a + "hook_q_input"] = (b, t, h, d)
            shapes[a + "hook_k_input"] = shapes[a + "hook_v_input"] = (b, t, kv_heads, d)
        else:
            shapes[a + "hook_attn_in"] = (b, t, h, d)
    return shapes


def expected_hooks(cfg: ModelConfig, b: int, t: int) -> dict[str, tuple]:
    """The hook table of labkit/model.py, spelled out (with every switch off)."""
    d, h = cfg.d_model, cfg.n_heads
    shapes = {"hook_embed": (b, t, d), "ln_final.hook_normalized": (b, t, d)}
    shapes["ln_final.hook_scale"] = (b, t, 1)
    kv_heads = cfg.n_kv_heads if cfg.attention == "gqa" else h
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        for name in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post"):
            shapes[p + name] = (b, t, d)
        shapes |= {p + "hook_attn_out": (b, t, d), p + "hook_mlp_out": (b, t, d)}
        shapes |= {p + "ln1.hook_normalized": (b, t, d), p + "ln2.hook_normalized": (b, t, d)}
        shapes |= {p + "ln1.hook_scale": (b, t, 1), p + "ln2.hook_scale": (b, t, 1)}
        a = p + "attn."
        shapes |= {
            a + "hook_q": (b, t, h, cfg.qk_head_dim),
            a + "hook_rot_q": (b, t, h, cfg.qk_head_dim),
        }
        shapes |= {a + "hook_k": (b, t, kv_heads, cfg.qk_head_dim)}
        shapes |= {a + "hook_rot_k": (b, t, kv_heads, cfg.qk_head_dim)}
        shapes |= {a + "hook_v": (b, t, kv_heads, cfg.value_head_dim)}
        shapes |= {a + "hook_z": (b, t, h, cfg.value_head_dim)}
        shapes |= {a + "hook_attn_scores": (b, h, t, t), a + "hook_pattern": (b, h, t, t)}
        for name in ("hook_pre", "hook_pre_linear", "hook_post"):
            shapes[p + "mlp." + name] = (b, t, cfg.d_ff)
        if cfg.attention == "mla":
            shapes[a + "hook_kv_latent"] = (b, t, cfg.kv_lora_rank)
            shapes[a + "hook_k_rope"] = (b, t, cfg.qk_rope_head_dim)
            if cfg.q_lora_rank:
                shapes[a + "hook_q_latent"] = (b, t, cfg.q_lora_rank)
    return shapes


CONFIGS = {
    "mla": odd_config("mla"),
    "mla-fullq": odd_config("mla", q_lora_rank=0, v_head_dim=9),
    "gqa": odd_config("gqa"),
    "mqa": odd_config("gqa", n_kv_heads=1),
    "mha": odd_config("gqa", n_kv_heads=6, tie_embeddings=True),
}


@pytest.fixture(params=sorted(CONFIGS))
def model(request):
    return LabModel(CONFIGS[request.param]).eval()


def tokens(cfg, b=2, t=19):
    return torch.randint(0, cfg.vocab_size, (b, t))


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_hook_names_and_shapes(model):
    toks = tokens(model.cfg)
    _, cache = model.run_with_cache(toks)
    expected = expected_hooks(model.cfg, *toks.shape)
    switched = switched_hooks(model.cfg, *toks.shape, "split") | switched_hooks(
        model.cfg, *toks.shape, "attn_in"
    )
    assert set(model.hook_dict) == set(expected) | set(switched)
    assert {k: tuple(v.shape) for k, v in cache.items()} == expected  # switched ones stay idle


@pytest.mark.parametrize("fork", ["split", "attn_in"])
def test_transformer_lens_switches_fire_their_hooks_and_keep_the_logits(model, fork):
    toks = tokens(model.cfg, t=7)
    with torch.no_grad():
        plain = model(toks)
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    (model.set_use_split_qkv_input if fork == "split" else model.set_use_attn_in)(True)
    with torch.no_grad():
        switched = model(toks)
        _, cache = model.run_with_cache(toks)
    expected = expected_hooks(model.cfg, *toks.shape)
    expected |= switched_hooks(model.cfg, *toks.shape, fork)
    if model.cfg.attention == "mla":  # under the fork MLA's latents are per head
        for i in range(model.cfg.n_layers):
            a, h = f"blocks.{i}.attn.", model.cfg.n_heads
            expected[a + "hook_kv_latent"] = (*toks.shape, h, model.cfg.kv_lora_rank)
            expected[a + "hook_k_rope"] = (*toks.shape, h, model.cfg.qk_rope_head_dim)
            if model.cfg.q_lora_rank:
                expected[a + "hook_q_latent"] = (*toks.shape, h, model.cfg.q_lora_rank)
    assert {k: tuple(v.shape) for k, v in cache.items()} == expected
    assert rel(switched, plain) <= 1e-5  # the same function, laid out per head
    # A model built from a config carries its switches.
    assert LabModel(model.cfg).cfg.use_attn_result


def test_fused_and_eager_paths_agree(model):
    toks = tokens(model.cfg)
    with torch.no_grad():
        fused = model(toks)
        model.set_attn_impl("eager")
        eager = model(toks)
        model.set_attn_impl("auto")
    assert not torch.equal(fused, torch.zeros_like(fused))
    assert rel(fused, eager) <= 1e-5
    # A hook on the pattern alone must route through the eager path and give the same logits.
    seen = []
    hooked = model.run_with_hooks(
        toks, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: seen.append(x.shape))]
    )
    assert seen and rel(hooked, fused) <= 1e-5


def test_pattern_rows_are_causal_distributions(model):
    _, cache = model.run_with_cache(tokens(model.cfg), names_filter=lambda n: "pattern" in n)
    pattern = cache["blocks.1.attn.hook_pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]))
    assert pattern.triu(diagonal=1).abs().max() == 0


def test_cached_decoding_matches_full_forward(model):
    toks = tokens(model.cfg, t=21)
    with torch.no_grad():
        full = model(toks)
        cache = KVCache(model.cfg, 2, 21)
        chunks = [(0, 9), (9, 10), (10, 14)] + [(i, i + 1) for i in range(14, 21)]
        parts = [model(toks[:, a:b], cache=cache) for a, b in chunks]
    assert cache.seq_len == 21
    assert rel(torch.cat(parts, 1), full) <= 1e-5


def test_mla_cache_holds_only_latent_and_rope_key():
    cfg = CONFIGS["mla"]
    model = LabModel(cfg).eval()
    cache = KVCache(cfg, 2, 16)
    with torch.no_grad():
        model(tokens(cfg, t=16), cache=cache)
    shapes = [tuple(b.shape) for b in cache.layers[0].buffers]
    assert shapes == [(2, 16, cfg.kv_lora_rank), (2, 16, cfg.qk_rope_head_dim)]
    assert cache.nbytes() == 2 * 16 * cfg.kv_cache_values_per_token() * 4


def test_mla_decode_with_key_hooks_matches_latent_decode():
    """The absorbed (latent) decode and the expanded decode compute the same thing."""
    cfg = CONFIGS["mla"]
    model = LabModel(cfg).eval()
    toks = tokens(cfg, t=12)

    def decode(fwd_hooks):
        cache = KVCache(cfg, 2, 12)
        with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks):
            model(toks[:, :8], cache=cache)
            return torch.cat([model(toks[:, i : i + 1], cache=cache) for i in range(8, 12)], 1)

    keys = []
    expanded = decode([("blocks.0.attn.hook_k", lambda x, hook: keys.append(x.shape))])
    assert keys[-1][1] == 12  # MLA's keys are recomputed from the whole latent cache
    assert rel(decode([]), expanded) <= 1e-5


def test_gqa_fused_path_never_repeats_kv(monkeypatch):
    model = LabModel(CONFIGS["gqa"]).eval()

    def forbidden(*args, **kwargs):
        raise AssertionError("repeat_interleave called on the fused path")

    monkeypatch.setattr(torch.Tensor, "repeat_interleave", forbidden)
    with torch.no_grad():
        model(tokens(model.cfg))


def test_patching_through_a_hook_changes_the_output(model):
    toks = tokens(model.cfg)
    clean = model(toks)
    same = model.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_resid_mid", lambda x, hook: x)])
    torch.testing.assert_close(same, clean)

    def ablate_head(z, hook):
        z[:, :, 0] = 0
        return z

    patched = model.run_with_hooks(toks, fwd_hooks=[("blocks.0.attn.hook_z", ablate_head)])
    assert (patched - clean).abs().max() > 1e-4

    # Causality: patching the last position leaves every earlier position untouched.
    def patch_last(x, hook):
        x[:, -1] = 0
        return x

    late = model.run_with_hooks(toks, fwd_hooks=[("blocks.2.hook_resid_pre", patch_last)])
    torch.testing.assert_close(late[:, :-1], clean[:, :-1])
    assert (late[:, -1] - clean[:, -1]).abs().max() > 1e-4


def test_kv_latent_patch_matches_manual_recomputation():
    """Zeroing c_kv leaves only the RoPE key in the scores and zero values: attention output of that
    layer must vanish."""
    cfg = CONFIGS["mla"]
    model = LabModel(cfg).eval()
    outs = []
    model.run_with_hooks(
        tokens(cfg),
        fwd_hooks=[
            ("blocks.1.attn.hook_kv_latent", lambda x, hook: torch.zeros_like(x)),
            ("blocks.1.hook_attn_out", lambda x, hook: outs.append(x)),
        ],
    )
    assert outs[0].abs().max() == 0


def test_hook_points_compiled_out_give_the_same_logits(model):
    bare = LabModel(model.cfg, hook_points=False).eval()
    bare.load_state_dict(model.state_dict())
    toks = tokens(model.cfg)
    with torch.no_grad():
        torch.testing.assert_close(bare(toks), model(toks), rtol=0, atol=0)
    assert bare.hook_dict == {}


def test_loss_return_types(model):
    toks = tokens(model.cfg)
    logits = model(toks)
    loss = model(toks, return_type="loss")
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), toks[:, 1:].reshape(-1)
    )
    torch.testing.assert_close(loss, expected)
    both = model(toks, return_type="both")
    torch.testing.assert_close(both.loss, loss)
    targets = toks.clone()
    targets[:, :5] = -100
    masked = model(toks, targets=targets, return_type="loss")
    kept = F.cross_entropy(logits[:, 5:].reshape(-1, logits.shape[-1]), toks[:, 5:].reshape(-1))
    torch.testing.assert_close(masked, kept)


def test_initialisation():
    cfg = ModelConfig.preset("small-mla").replace(n_layers=8)
    model = LabModel(cfg)
    assert abs(model.embed.weight.std().item() - 0.02) < 0.001
    down = model.blocks[0].mlp.down_proj.weight.std().item()
    assert abs(down - 0.02 / 4) < 0.0005  # 1/sqrt(2 * 8 layers)
    assert torch.all(model.blocks[0].attn.kv_norm.weight == 1)
    assert model.unembed.weight is model.embed.weight  # tied preset


def test_out_of_vocabulary_tokens_are_a_clear_error(model):
    bad = tokens(model.cfg)
    bad[0, 3] = model.cfg.vocab_size
    with pytest.raises(ValueError, match=r"token id 301 is outside the vocabulary \[0, 301\)"):
        model(bad)
    with pytest.raises(ValueError, match="token id -1"):
        model(torch.tensor([[1, -1]]))
    with pytest.raises(TypeError, match="integer"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_greedy_generation_matches_uncached_argmax(model):
    prompt = tokens(model.cfg, t=6)
    out = model.generate(prompt, max_new_tokens=8, temperature=0)
    assert out.shape == (2, 14) and torch.equal(out[:, :6], prompt)
    seq = prompt
    with torch.no_grad():
        for _ in range(8):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_sampling_respects_top_k_and_seed():
    model = LabModel(CONFIGS["gqa"]).eval()
    prompt = tokens(model.cfg, t=4)
    a = model.generate(prompt, 10, top_k=1, generator=torch.Generator().manual_seed(1))
    greedy = model.generate(prompt, 10, temperature=0)
    assert torch.equal(a, greedy)
    s1 = model.generate(prompt, 10, temperature=1.5, generator=torch.Generator().manual_seed(3))
    s2 = model.generate(prompt, 10, temperature=1.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model.generate(prompt, 100)


def test_bf16_autocast_training_step():
    """What the trainer does on the CPU: fp32 master weights, bf16 autocast, AdamW."""
    cfg = ModelConfig.preset("tiny-mla")
    model = LabModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    toks = torch.randint(0, cfg.vocab_size, (4, 64))
    losses = []
    for _ in range(5):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(toks, return_type="loss")
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert model.embed.weight.dtype == torch.float32
    assert losses[-1] < losses[0] - 0.1


def test_stop_at_layer_returns_the_residual_stream(model):
    toks = tokens(model.cfg)
    _, cache = model.run_with_cache(toks)
    resid = model(toks, stop_at_layer=2)
    torch.testing.assert_close(resid, cache["blocks.1.hook_resid_post"])
    assert model(toks, stop_at_layer=0).shape == (2, 19, model.cfg.d_model)


def test_rope_tables_are_fp32_buffers_outside_the_state_dict():
    """The model keeps cos/sin for every position (a compiled graph reads them instead of
    recomputing cos per element); they equal rope_tables at any offset, stay fp32 when the model
    changes dtype, are rebuilt after `to_empty`, and never enter a checkpoint."""
    from labkit.model import rope_tables

    cfg = ModelConfig.preset("tiny-mla").replace(max_seq_len=64)
    model = LabModel(cfg)
    assert not any(k.startswith("rope_") for k in model.state_dict())
    want_cos, want_sin = rope_tables(cfg.rope_dim, torch.arange(10, 30), cfg.rope_theta)
    assert torch.equal(model.rope_cos[10:30], want_cos)
    assert torch.equal(model.rope_sin[10:30], want_sin)
    model.to(torch.bfloat16)
    assert model.rope_cos.dtype == torch.float32 and torch.equal(model.rope_cos[10:30], want_cos)
    empty = LabModel(cfg).to_empty(device="cpu")
    assert torch.equal(empty.rope_sin[10:30], want_sin)


@pytest.mark.parametrize("preset", ["tiny-mla", "tiny-gqa"])
def test_left_padded_rows_with_masked_keys_score_as_they_would_alone(preset):
    """KVCache.mask_keys: sequences of different lengths left-padded into one cache (prefill,
    then a continuation on top) give each row's logits as that sequence alone: RoPE scores see
    only distances, and no query sees a padded key."""
    torch.manual_seed(0)
    model = LabModel(ModelConfig.preset(preset).replace(max_seq_len=64)).eval()
    seqs = [torch.randint(0, model.cfg.vocab_size, (n,)) for n in (9, 5)]
    more = torch.randint(0, model.cfg.vocab_size, (2, 3))
    width = max(len(s) for s in seqs)
    batch = torch.zeros(2, width, dtype=torch.long)
    valid = torch.ones(2, width + 3, dtype=torch.bool)
    for r, s in enumerate(seqs):
        batch[r, width - len(s) :] = s
        valid[r, : width - len(s)] = False
    cache = KVCache(model.cfg, 2, width + 3)
    cache.mask_keys(valid)
    with torch.no_grad():
        first = model(batch, cache=cache)[:, -1]
        then = model(more, cache=cache)
        for r, s in enumerate(seqs):
            alone = model(torch.cat([s, more[r]])[None])[0]
            torch.testing.assert_close(first[r], alone[len(s) - 1], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(then[r], alone[len(s) :], atol=1e-4, rtol=1e-4)
