"""LabModel speaks TransformerLens's model protocol: TransformerLens's own ActivationCache, patching
and head detector run on it, for MLA and GQA, and the identities they promise hold numerically.

Models are built on the odd-size configs with every weight — norm gains included — drawn at a
scale that makes attention peaked, so a wrong layout, a dropped gain or a lost norm scale shows."""

import pytest
import torch
from conftest import odd_config
from transformer_lens import ActivationCache, patching
from transformer_lens.FactoredMatrix import FactoredMatrix
from transformer_lens.head_detector import detect_head
from transformer_lens.model_protocol import TransformerLensModel
from transformer_lens.utilities import get_act_name

from labkit.analysis.induction import copying_scores, head_scores
from labkit.analysis.latent import kv_latent_patching
from labkit.analysis.lens import logit_lens_loss
from labkit.config import ModelConfig
from labkit.data.tokenizer import train_tokenizer
from labkit.model import LabModel, apply_rope, rope_tables

CONFIGS = {"mla": odd_config("mla"), "mla-fullq": odd_config("mla", q_lora_rank=0)}
CONFIGS |= {"gqa": odd_config("gqa"), "mha-tied": odd_config("gqa", n_kv_heads=6)}
TEXTS = [
    "The cat sat on the mat. The dog sat on the log.",
    "Alice met Bob in Paris in 2024, and Bob met Alice again.",
    "one two three four five six seven eight nine ten",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=301)


def build(cfg: ModelConfig) -> LabModel:
    torch.manual_seed(1)
    model = LabModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # every RMSNorm gain, the latent norms' included
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.25)
    return model


@pytest.fixture(params=sorted(CONFIGS))
def model(request):
    return build(CONFIGS[request.param])


def tokens(cfg: ModelConfig, b: int = 2, t: int = 13) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (b, t), generator=torch.Generator().manual_seed(3))


# --------------------------------------------------------------------------- protocol and cfg
def test_protocol_and_one_config(model):
    assert isinstance(model, TransformerLensModel)
    cfg = model.cfg
    assert isinstance(cfg, ModelConfig)
    assert (cfg.d_head, cfg.d_mlp, cfg.d_vocab, cfg.n_ctx) == (
        cfg.value_head_dim,
        cfg.d_ff,
        cfg.vocab_size,
        cfg.max_seq_len,
    )
    assert cfg.n_key_value_heads == (cfg.n_kv_heads if cfg.attention == "gqa" else None)
    assert cfg.normalization_type == "RMS" and cfg.positional_embedding_type == "rotary"
    assert cfg.act_fn == "silu" and cfg.gated_mlp and not cfg.attn_only
    # Derived, never stored: the serialised config is labkit's own fields only.
    assert set(cfg.to_dict()) == {f for f in ModelConfig.__dataclass_fields__}
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.device == torch.device("cpu") and cfg.dtype == torch.float32
    model.double()
    assert model.cfg.dtype == torch.float64
    other = LabModel(cfg)  # a config handed to a second model is copied, not shared
    assert other.cfg is not model.cfg and other.cfg.dtype == torch.float32


def test_run_with_cache_returns_activation_cache(model):
    toks = tokens(model.cfg)
    logits, cache = model.run_with_cache(toks)
    assert isinstance(cache, ActivationCache)
    torch.testing.assert_close(cache["pattern", 0], cache["blocks.0.attn.hook_pattern"])
    torch.testing.assert_close(cache["resid_post", -1], cache["blocks.2.hook_resid_post"])
    assert cache["scale", 1, "ln1"].shape == (*toks.shape, 1)
    _, plain = model.run_with_cache(toks, return_cache_object=False)
    assert type(plain) is dict and plain.keys() == cache.cache_dict.keys()
    _, single = model.run_with_cache(toks[:1], remove_batch_dim=True)
    assert single["resid_pre", 0].shape == (toks.shape[1], model.cfg.d_model)
    if model.cfg.attention == "mla":  # TransformerLens's spelling of the latent hooks
        assert cache["kv_latent", 1] is cache["blocks.1.attn.hook_kv_latent"]


# --------------------------------------------------------------------------- ActivationCache
@torch.no_grad()
def test_residual_decomposition_identities(model):
    cfg = model.cfg
    toks = tokens(cfg)
    logits, cache = model.run_with_cache(toks)
    final = cache["resid_post", cfg.n_layers - 1]
    stack, labels = cache.decompose_resid(return_labels=True)
    assert labels[0] == "embed" and len(labels) == 1 + 2 * cfg.n_layers
    torch.testing.assert_close(stack.sum(0), final, rtol=0, atol=1e-5)
    for layer in range(cfg.n_layers):
        torch.testing.assert_close(
            cache.decompose_resid(layer=layer).sum(0), cache["resid_pre", layer], rtol=0, atol=1e-5
        )
        # stack_head_results (hook_z x W_O) sums to the layer's attention output.
        heads = cache.stack_head_results(layer=layer + 1)[-cfg.n_heads :]
        assert heads.shape == (cfg.n_heads, *toks.shape, cfg.d_model)
        torch.testing.assert_close(heads.sum(0), cache["attn_out", layer], rtol=0, atol=1e-5)
    # logit_attrs of the decomposition sum to each token's logit (ln_final's gain included).
    attrs = cache.logit_attrs(stack, tokens=toks)
    torch.testing.assert_close(
        attrs.sum(0), logits.gather(-1, toks[..., None])[..., 0], rtol=0, atol=1e-4
    )
    directions = model.tokens_to_residual_directions(toks)
    assert directions.shape == (*toks.shape, cfg.d_model)
    # Logit lens: the last accumulated residual, through ln_final and W_U, is the logits.
    acc, acc_labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
    assert acc_labels[-1] == "final_post" and len(acc) == cfg.n_layers + 1
    torch.testing.assert_close(acc[-1] @ model.W_U + model.b_U, logits, rtol=0, atol=1e-4)
    # TransformerLens's own logit-lens tool (last position by default) ends at the logits.
    torch.testing.assert_close(cache.logit_lens().values[-1], logits[:, -1], rtol=0, atol=1e-4)
    # The full decomposition (every head, every neuron, embed, biases) sums to the residual.
    full = cache.get_full_resid_decomposition(expand_neurons=True)
    assert full.shape[0] == cfg.n_layers * (cfg.n_heads + cfg.d_mlp) + 2
    torch.testing.assert_close(full.sum(0), final, rtol=0, atol=1e-4)
    # Mid-stack: divided by the cached ln1 scale it is exactly ln1's normalized input.
    mid = cache.accumulated_resid(layer=1, apply_ln=True)
    torch.testing.assert_close(mid[-1], cache["normalized", 1, "ln1"], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- weights
def _head_inputs(model, cache, layer):
    """ln1's output at `layer` and MLA's per-token norm divisors (ones for GQA)."""
    block = model.blocks[layer]
    x = cache["normalized", layer, "ln1"] * block.ln1.weight
    if model.cfg.attention == "mla":
        return x, block.attn.query_norm_scale(x), block.attn.kv_norm_scale(x)
    ones = torch.ones(x.shape[:-1])
    return x, ones, ones


@torch.no_grad()
def test_per_head_weights_reproduce_q_k_v(model):
    cfg = model.cfg
    toks = tokens(cfg)
    _, cache = model.run_with_cache(toks)
    cos, sin = rope_tables(cfg.rope_dim, torch.arange(toks.shape[1]), cfg.rope_theta)
    group = cfg.n_heads // cfg.n_kv_heads if cfg.attention == "gqa" else 1
    assert model.W_Q.shape == (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.qk_head_dim)
    assert model.W_O.shape == (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model)
    for layer in range(cfg.n_layers):
        attn = model.blocks[layer].attn
        x, s_q, s_kv = _head_inputs(model, cache, layer)
        for h in range(cfg.n_heads):
            q = torch.einsum("bpd,de->bpe", x, attn.W_Q[h]) / s_q[..., None]
            k = torch.einsum("bpd,de->bpe", x, attn.W_K[h])
            v = torch.einsum("bpd,de->bpe", x, attn.W_V[h]) / s_kv[..., None]
            torch.testing.assert_close(q, cache["q", layer][:, :, h], rtol=1e-4, atol=1e-5)
            kv_h = h // group
            torch.testing.assert_close(v, cache["v", layer][:, :, kv_h], rtol=1e-4, atol=1e-5)
            if cfg.attention == "mla":  # nope part / s_kv; RoPE part exact, rotated in hook_k
                nope = cfg.qk_nope_head_dim
                k_cached = cache["k", layer][:, :, h]
                torch.testing.assert_close(
                    k[..., :nope] / s_kv[..., None], k_cached[..., :nope], rtol=1e-4, atol=1e-5
                )
                torch.testing.assert_close(
                    apply_rope(k[..., nope:], cos, sin), k_cached[..., nope:], rtol=1e-4, atol=1e-5
                )
                torch.testing.assert_close(
                    cache["k_rope", layer], k_cached[..., nope:], rtol=0, atol=0
                )
            else:
                torch.testing.assert_close(k, cache["k", layer][:, :, kv_h], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_ov_and_qk_reproduce_head_computations(model):
    cfg = model.cfg
    toks = tokens(cfg)
    _, cache = model.run_with_cache(toks)
    scale = cfg.qk_head_dim**-0.5
    for layer in range(cfg.n_layers):
        attn = model.blocks[layer].attn
        x, s_q, s_kv = _head_inputs(model, cache, layer)
        pattern = cache["pattern", layer]  # [b, h, dest, src]
        result = torch.einsum("bphd,hde->bphe", cache["z", layer], attn.W_O)
        ov, qk = attn.OV, attn.QK
        assert isinstance(ov, FactoredMatrix) and ov.shape == (
            cfg.n_heads,
            cfg.d_model,
            cfg.d_model,
        )
        torch.testing.assert_close(model.OV[layer].AB, ov.AB)
        for h in range(cfg.n_heads):
            # OV: a head writes pattern-weighted (x_src / s_kv(src)) @ OV.
            moved = (x / s_kv[..., None]) @ ov[h].AB
            torch.testing.assert_close(pattern[:, h] @ moved, result[:, :, h], rtol=1e-4, atol=1e-5)
            # QK: where source == destination RoPE cancels; the score is the bilinear form
            # (MLA: its no-RoPE part over s_q(dest) s_kv(src), its RoPE part over s_q(dest)).
            scores = cache["attn_scores", layer][:, h].diagonal(dim1=-2, dim2=-1)
            if cfg.attention == "mla":
                nope = ((x @ attn.QK_nope[h].AB) * x).sum(-1) / (s_q * s_kv)
                rope = ((x @ attn.QK_rope[h].AB) * x).sum(-1) / s_q
                torch.testing.assert_close(
                    attn.QK_nope[h].AB + attn.QK_rope[h].AB, qk[h].AB, rtol=1e-5, atol=1e-5
                )
                expected = (nope + rope) * scale
            else:
                expected = ((x @ qk[h].AB) * x).sum(-1) * scale
            torch.testing.assert_close(expected, scores, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- patching
def _logit_metric(target: int):
    return lambda logits: logits[:, -1, target].mean()


@torch.no_grad()
def test_activation_patching_agrees_with_a_manual_patch(model):
    cfg = model.cfg
    clean, corrupted = tokens(cfg, b=1, t=6), tokens(cfg, b=1, t=6).roll(1, dims=1)
    _, clean_cache = model.run_with_cache(clean)
    metric = _logit_metric(int(model(clean)[0, -1].argmax()))

    def manual(name, index, fn):
        def hook(act, hook):
            act = act.clone()
            fn(act, index)
            return act

        return metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)]))

    resid = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    assert resid.shape == (cfg.n_layers, clean.shape[1])
    name = "blocks.1.hook_resid_pre"
    want = manual(name, 3, lambda a, p: a.__setitem__((slice(None), p), clean_cache[name][:, p]))
    torch.testing.assert_close(resid[1, 3], want)
    # The patches move the metric away from the unpatched corrupted run.
    assert not torch.allclose(resid, metric(model(corrupted)).expand_as(resid))

    heads = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)
    assert heads.shape == (cfg.n_layers, cfg.n_heads)
    name = "blocks.2.attn.hook_z"
    want = manual(
        name,
        4,
        lambda a, h: a.__setitem__((slice(None), slice(None), h), clean_cache[name][:, :, h]),
    )
    torch.testing.assert_close(heads[2, 4], want)

    values = patching.get_act_patch_attn_head_v_all_pos(model, corrupted, clean_cache, metric)
    assert values.shape == (cfg.n_layers, cfg.n_key_value_heads or cfg.n_heads)


@pytest.mark.parametrize("name", ["mla", "mla-fullq"])
@torch.no_grad()
def test_patching_c_kv_with_transformer_lens(name):
    model = build(CONFIGS[name])
    cfg = model.cfg
    clean, corrupted = tokens(cfg, b=1, t=5), tokens(cfg, b=1, t=5).flip(1)
    _, clean_cache = model.run_with_cache(clean)
    metric = _logit_metric(7)
    out = patching.generic_activation_patch(
        model,
        corrupted,
        clean_cache,
        metric,
        patch_setter=patching.layer_pos_patch_setter,
        activation_name="kv_latent",
        index_axis_names=("layer", "pos"),
    )
    assert out.shape == (cfg.n_layers, clean.shape[1])
    name = "blocks.1.attn.hook_kv_latent"

    def hook(act, hook):
        act = act.clone()
        act[:, 2] = clean_cache[name][:, 2]
        return act

    want = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)]))
    torch.testing.assert_close(out[1, 2], want)
    assert not torch.allclose(out[1, 2], metric(model(corrupted)))  # the patch did something


# --------------------------------------------------------------------------- head detector
@torch.no_grad()
def test_head_detector_equals_labkit_induction(model, tokenizer):
    model.set_tokenizer(tokenizer)
    text = "Alice met Bob in Paris. Alice met Bob in Paris."
    toks = model.to_tokens(text)
    assert model.to_string(toks[0]) == text
    assert "".join(model.to_str_tokens(text)) == text
    for tl_name, ours in (
        ("previous_token_head", "previous_token"),
        ("duplicate_token_head", "duplicate_token"),
        ("induction_head", "induction"),
    ):
        for measure in ("mul", "abs"):
            theirs = detect_head(model, text, tl_name, error_measure=measure, exclude_bos=True)
            mine = head_scores(model, toks, ours, error_measure=measure, exclude_bos=True)
            torch.testing.assert_close(theirs, mine, rtol=0, atol=1e-6)
    # Peaked heads: the scores differ between heads, so equality is not a uniform-attention echo.
    scores = detect_head(model, text, "previous_token_head")
    assert scores.max() - scores.min() > 0.1


# --------------------------------------------------------------------------- labkit's analyses
@pytest.mark.parametrize("name", ["mla", "gqa"])
@torch.no_grad()
def test_logit_lens_ends_at_the_models_own_loss(name):
    model = build(CONFIGS[name])
    toks = tokens(model.cfg, b=3, t=9)
    losses, labels = logit_lens_loss(model, toks)
    assert labels == [f"{i}_pre" for i in range(model.cfg.n_layers)] + ["final_post"]
    assert losses[-1] == pytest.approx(model(toks, return_type="loss").item(), abs=1e-5)
    # The embedding's lens: ln_final then W_U straight on the token embeddings.
    embed = model.unembed(model.ln_final(model.embed(toks)))[:, :-1]
    assert losses[0] == pytest.approx(LabModel.loss(embed, toks[:, 1:], toks[:, 1:]).item(), 1e-5)


@torch.no_grad()
def test_kv_latent_patching_is_transformer_lens_patching():
    model = build(CONFIGS["mla"])
    clean, corrupted = tokens(model.cfg, b=2, t=5), tokens(model.cfg, b=2, t=5).flip(1)
    metric = _logit_metric(11)
    out = kv_latent_patching(model, clean, corrupted, metric)
    _, cache = model.run_with_cache(clean)
    theirs = patching.generic_activation_patch(
        model,
        corrupted,
        cache,
        metric,
        patch_setter=patching.layer_pos_patch_setter,
        activation_name="kv_latent",
        index_axis_names=("layer", "pos"),
    )
    torch.testing.assert_close(out, theirs)


@torch.no_grad()
def test_copying_scores_follow_from_ov(model):
    """labkit's OV copying score, recomputed from TransformerLens-style OV matrices: a token's
    embedding through ln1, OV (over MLA's s_kv), ln_final and W_U ranks the token itself in the
    top 100 exactly as often as `copying_scores` says (a wide top-k, so that shares are far from
    0 and differ between heads)."""
    cfg = model.cfg
    toks = torch.randperm(cfg.vocab_size, generator=torch.Generator().manual_seed(0))[:60]
    ours = copying_scores(model, toks, top_k=100)
    assert ours.std() > 0.02
    emb = model.W_E[toks][None]  # [1, n, d]
    for layer, block in enumerate(model.blocks):
        x = block.ln1(emb)
        s_kv = block.attn.kv_norm_scale(x) if cfg.attention == "mla" else torch.ones(x.shape[:-1])
        for h in range(cfg.n_heads):
            written = (x / s_kv[..., None]) @ model.OV[layer, h].AB
            logits = model.ln_final(written)[0] @ model.W_U
            top = logits.topk(100, dim=-1).indices
            share = (top == toks[:, None]).any(-1).float().mean()
            assert share.item() == pytest.approx(ours[layer, h].item()), (layer, h)


# --------------------------------------------------------------------------- every patching sweep
# get_act_patch_* name -> (activation, the slice of it one index patches). Index = the sweep's
# axes after the layer.
_ALL = slice(None)
SWEEPS = {
    "resid_pre": ("resid_pre", lambda p: (_ALL, p)),
    "resid_mid": ("resid_mid", lambda p: (_ALL, p)),
    "attn_out": ("attn_out", lambda p: (_ALL, p)),
    "mlp_out": ("mlp_out", lambda p: (_ALL, p)),
    "attn_head_out_by_pos": ("z", lambda p, h: (_ALL, p, h)),
    "attn_head_q_by_pos": ("q", lambda p, h: (_ALL, p, h)),
    "attn_head_k_by_pos": ("k", lambda p, h: (_ALL, p, h)),
    "attn_head_v_by_pos": ("v", lambda p, h: (_ALL, p, h)),
    "attn_head_pattern_by_pos": ("pattern", lambda h, d: (_ALL, h, d)),
    "attn_head_pattern_dest_src_pos": ("pattern", lambda h, d, s: (_ALL, h, d, s)),
    "attn_head_out_all_pos": ("z", lambda h: (_ALL, _ALL, h)),
    "attn_head_q_all_pos": ("q", lambda h: (_ALL, _ALL, h)),
    "attn_head_k_all_pos": ("k", lambda h: (_ALL, _ALL, h)),
    "attn_head_v_all_pos": ("v", lambda h: (_ALL, _ALL, h)),
    "attn_head_pattern_all_pos": ("pattern", lambda h: (_ALL, h)),
}
# Two layers of four heads keep the sweeps (one forward per index) fast.
PATCH_CONFIGS = {
    name: odd_config(kind, n_layers=2, n_heads=4, **extra)
    for name, kind, extra in [
        ("mla", "mla", {}),
        ("mla-fullq", "mla", {"q_lora_rank": 0}),
        ("gqa", "gqa", {"n_kv_heads": 2}),
        ("mha", "gqa", {"n_kv_heads": 4}),
    ]
}


def _patching_setup(name):
    model = build(PATCH_CONFIGS[name])
    cfg = model.cfg
    clean = tokens(cfg, b=1, t=3)
    corrupted = torch.tensor([[7, 200, 42]])
    _, clean_cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)
    return model, clean_cache, corrupted, corrupted_cache, _logit_metric(int(clean[0, -1]))


def _manual_patch(model, corrupted, metric, name, where, source):
    """The metric of the corrupted run with activation `name`[where] taken from `source`."""

    def hook(act, hook):
        act = act.clone()
        act[where] = source[where]
        return act

    return metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)]))


@pytest.mark.parametrize("name", ["mla", "mla-fullq", "gqa"])
@torch.no_grad()
def test_every_act_patch_sweep_equals_a_manual_patch(name):
    """All fifteen single sweeps of transformer_lens.patching, at every index, against a patch
    done by hand with run_with_hooks; the three `_every` helpers stack them."""
    everything = {n for n in dir(patching) if n.startswith("get_act_patch_")}
    tested = {*SWEEPS, "block_every", "attn_head_all_pos_every", "attn_head_by_pos_every"}
    tested |= {"direct_path", "direct_path_all_sources"}  # test_direct_path_patching_...
    assert everything == {f"get_act_patch_{n}" for n in tested}  # a new one gets a test here
    model, clean_cache, corrupted, _, metric = _patching_setup(name)
    cfg = model.cfg
    unpatched = metric(model(corrupted))
    results = {}
    for sweep, (act, where) in SWEEPS.items():
        out = getattr(patching, f"get_act_patch_{sweep}")(model, corrupted, clean_cache, metric)
        results[sweep] = out
        heads = cfg.n_key_value_heads if act in ("k", "v") and cfg.attention == "gqa" else None
        if act in ("q", "k", "v", "z") or sweep.startswith("attn_head_pattern"):
            assert out.shape[out.dim() - 1 if "by_pos" in sweep and act != "pattern" else 1] == (
                heads or cfg.n_heads
            ), sweep
        for index in torch.cartesian_prod(*[torch.arange(n) for n in out.shape]).tolist():
            index = index if isinstance(index, list) else [index]
            layer, rest = index[0], index[1:]
            hook_name = get_act_name(act, layer)
            want = _manual_patch(
                model, corrupted, metric, hook_name, where(*rest), clean_cache[hook_name]
            )
            torch.testing.assert_close(out[tuple(index)], want, msg=f"{sweep} {index}")
        assert not torch.allclose(out, unpatched.expand_as(out)), sweep  # the patches do something
    every = patching.get_act_patch_block_every(model, corrupted, clean_cache, metric)
    torch.testing.assert_close(
        every, torch.stack([results["resid_pre"], results["attn_out"], results["mlp_out"]])
    )
    every = patching.get_act_patch_attn_head_all_pos_every(model, corrupted, clean_cache, metric)
    for i, part in enumerate(("out", "q", "k", "v", "pattern")):
        mine = results[f"attn_head_{part}_all_pos"]
        torch.testing.assert_close(every[i, :, : mine.shape[1]], mine)
    every = patching.get_act_patch_attn_head_by_pos_every(model, corrupted, clean_cache, metric)
    for i, part in enumerate(("out", "q", "k", "v")):
        mine = results[f"attn_head_{part}_by_pos"]
        torch.testing.assert_close(every[i, :, :, : mine.shape[2]], mine)
    torch.testing.assert_close(every[4], results["attn_head_pattern_by_pos"].transpose(1, 2))


def _head_input_from(model, layer, x, component):
    """What head-input `component` ("q", "k" or "v") of layer `layer` computes, for every head,
    from an ln1 output x [b, pos, d_model], by the model's own (unforked) path: hook_q, hook_k,
    hook_v's values."""
    attn, cfg = model.blocks[layer].attn, model.cfg
    b, t, _ = x.shape
    if cfg.attention == "gqa":
        proj = {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj}[component]
        return proj(x).view(b, t, -1, cfg.head_dim)
    if component == "q":
        return attn.query(x)
    c_kv, k_rope = attn.kv_down(x).split([cfg.kv_lora_rank, cfg.qk_rope_head_dim], dim=-1)
    kv = attn.kv_up(attn.kv_norm(c_kv)).view(b, t, cfg.n_heads, -1)
    if component == "v":
        return kv[..., cfg.qk_nope_head_dim :]
    cos, sin = rope_tables(cfg.rope_dim, torch.arange(t), cfg.rope_theta)
    rope = apply_rope(k_rope, cos, sin)[:, :, None].expand(b, t, cfg.n_heads, -1)
    return torch.cat((kv[..., : cfg.qk_nope_head_dim], rope), dim=-1)  # MLA's hook_k is rotated


@pytest.mark.parametrize(
    ("name", "components"),
    [("mla", "qkv"), ("mla-fullq", "qkv"), ("gqa", "q"), ("mha", "qkv")],
)
@torch.no_grad()
def test_direct_path_patching_equals_a_manual_edge_patch(name, components):
    """get_act_patch_direct_path (through use_split_qkv_input and the per-head input hooks):
    head (l, h) reading the source head's clean write on its q/k/v input alone equals
    recomputing that head's query/key/value by the model's ordinary path from
    ln1(resid_pre + delta), everything else corrupted. GQA with fewer KV heads than query heads
    has no per-query-head key/value input: TransformerLens refuses k and v there."""
    model, clean_cache, corrupted, corrupted_cache, metric = _patching_setup(name)
    cfg = model.cfg
    src_layer, src_head = 0, 3
    z = f"blocks.{src_layer}.attn.hook_z"
    w_o = model.blocks[src_layer].attn.W_O[src_head]
    delta = (clean_cache[z][:, :, src_head] - corrupted_cache[z][:, :, src_head]) @ w_o
    for component in components:
        out = patching.get_act_patch_direct_path(
            model, corrupted, clean_cache, corrupted_cache, metric, src_layer, src_head,
            component=component, verbose=False,
        )  # fmt: skip
        assert out.shape == (cfg.n_layers, cfg.n_heads) and not cfg.use_split_qkv_input
        assert (out[: src_layer + 1] == 0).all()
        for layer in range(src_layer + 1, cfg.n_layers):
            block = model.blocks[layer]
            x = block.ln1(corrupted_cache["resid_pre", layer] + delta)
            new = _head_input_from(model, layer, x, component)
            for head in range(cfg.n_heads):
                hook_name = f"blocks.{layer}.attn.hook_{component}"
                where = (_ALL, _ALL, head)
                want = _manual_patch(model, corrupted, metric, hook_name, where, new)
                torch.testing.assert_close(
                    out[layer, head], want, msg=f"{component} {layer} {head}"
                )
        assert not torch.allclose(out[src_layer + 1 :], metric(model(corrupted)))
    if components == "q":
        with pytest.raises(ValueError, match="GQA/MQA"):
            patching.get_act_patch_direct_path(
                model, corrupted, clean_cache, corrupted_cache, metric, 0, 0, component="k"
            )
    every = patching.get_act_patch_direct_path_all_sources(
        model, corrupted, clean_cache, corrupted_cache, metric, verbose=False
    )
    assert every.shape == (cfg.n_layers, cfg.n_heads, cfg.n_layers, cfg.n_heads)
    one = patching.get_act_patch_direct_path(
        model, corrupted, clean_cache, corrupted_cache, metric, src_layer, src_head, verbose=False
    )
    torch.testing.assert_close(every[src_layer, src_head], one)


# --------------------------------------------------------------------------- hook_result
@torch.no_grad()
def test_hook_result_is_each_heads_write_and_sums_to_attn_out(model):
    cfg = model.cfg
    toks = tokens(cfg)
    _, off = model.run_with_cache(toks)
    with pytest.raises(KeyError, match=r"set_use_attn_result\(True\)"):
        off["result", 0]
    model.cfg.use_attn_result = True  # TransformerLens's spelling works as well as the setter
    _, on = model.run_with_cache(toks)
    for layer in range(cfg.n_layers):
        result = on["result", layer]
        assert result.shape == (*toks.shape, cfg.n_heads, cfg.d_model)
        # Summed over heads: the layer's output, as computed with the switch off (one matmul;
        # float rounding differs, and accumulates over the layers).
        torch.testing.assert_close(result.sum(2), off["attn_out", layer], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(result.sum(2), on["attn_out", layer], rtol=0, atol=0)
        w_o = model.blocks[layer].attn.W_O
        per_head = torch.einsum("bphd,hdm->bphm", on["z", layer], w_o)
        torch.testing.assert_close(result, per_head, rtol=0, atol=1e-6)
        # TransformerLens's own per-head decomposition reads the same numbers.
        stacked = on.stack_head_results(layer=layer + 1)[-cfg.n_heads :]
        torch.testing.assert_close(stacked, result.permute(2, 0, 1, 3), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- weights: TL names
@torch.no_grad()
def test_tl_parameters_and_svd_interpreter(model):
    from transformer_lens import SVDInterpreter

    cfg = model.cfg
    params = model.tl_parameters()
    assert params["blocks.1.attn.W_V"].shape == (cfg.n_heads, cfg.d_model, cfg.d_head)
    torch.testing.assert_close(params["blocks.2.attn.W_O"], model.W_O[2])
    assert params["unembed.W_U"].shape == (cfg.d_model, cfg.d_vocab)
    assert params["blocks.0.ln2.w"] is model.blocks[0].ln2.weight
    assert dict(model.tl_named_parameters()).keys() == params.keys()
    svd = SVDInterpreter(model)
    vectors = svd.get_singular_vectors("OV", layer_index=1, head_index=2, num_vectors=4)
    assert vectors.shape == (cfg.d_vocab, 1, 4)
    # They are OV's top right singular vectors (its input directions... read out through W_U).
    _, s, vh = torch.linalg.svd(model.OV[1, 2].AB.double())
    expected = (model.W_U.T.double() @ vh[:4].T).float()
    got = vectors[:, 0]
    sign = torch.sign((got * expected).sum(0))  # singular vectors are defined up to sign
    torch.testing.assert_close(got * sign, expected, rtol=1e-3, atol=1e-4)
    assert (s[:4].diff() < 0).all()  # distinct singular values: the directions are unique
    # w_in reads ln2's gain while it is unfolded; folding moves it into W_in: same vectors.
    before = svd.get_singular_vectors("w_in", layer_index=0, num_vectors=3)[:, 0]
    folded = model.processed_copy()
    assert "blocks.0.ln2.w" not in folded.tl_parameters()
    after = SVDInterpreter(folded).get_singular_vectors("w_in", layer_index=0, num_vectors=3)
    # W_U changed by ln_final's gain too: compare in the residual basis.
    back = torch.linalg.lstsq(model.W_U.T, before).solution
    ahead = torch.linalg.lstsq(folded.W_U.T, after[:, 0]).solution
    torch.testing.assert_close(back.abs(), ahead.abs(), rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------- weight processing
@pytest.mark.parametrize("name", [*sorted(CONFIGS), "gqa-tied"])
@torch.no_grad()
def test_folding_the_norms_keeps_the_logits_and_makes_dla_plain(name):
    cfg = odd_config("gqa", tie_embeddings=True) if name == "gqa-tied" else CONFIGS[name]
    model = build(cfg)
    toks = tokens(model.cfg)
    logits = model(toks)
    folded = model.processed_copy()  # process_weights_ on a copy: the model keeps its gains
    first = folded(toks)
    # The same logits to 1e-5 of their scale (these peaked weights give logits of ~10: float32's
    # rounding of a reordered product is what is left).
    assert (first - logits).abs().max() <= 1e-5 * logits.abs().max()
    assert model.cfg.normalization_type == "RMS" and folded.cfg.normalization_type == "RMSPre"
    assert not torch.all(model.blocks[0].ln1.weight == 1)
    norms = [folded.ln_final] + [b.ln1 for b in folded.blocks] + [b.ln2 for b in folded.blocks]
    assert all(torch.all(n.weight == 1) for n in norms)
    if name == "gqa-tied":  # the unembedding takes ln_final's gain, the embedding does not
        assert model.cfg.tie_embeddings and not folded.cfg.tie_embeddings
        torch.testing.assert_close(folded.W_E, model.W_E, rtol=0, atol=0)
    # Per-head weights now act on the normalised residual: ln1's gain moved into them.
    g = model.blocks[1].ln1.weight[:, None]
    torch.testing.assert_close(folded.W_V[1], g * model.W_V[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(folded.W_Q[1], g * model.W_Q[1], rtol=1e-5, atol=1e-6)
    # Direct logit attribution, the plain way: the scale-divided components through W_U sum to
    # the logits (every token), with no gain to remember; unfolded that misses ln_final's gain.
    logits_f, cache = folded.run_with_cache(toks)
    stack = cache.apply_ln_to_stack(cache.decompose_resid())
    torch.testing.assert_close((stack @ folded.W_U).sum(0), logits_f, rtol=0, atol=1e-4)
    _, cache = model.run_with_cache(toks)
    plain = (cache.apply_ln_to_stack(cache.decompose_resid()) @ model.W_U).sum(0)
    assert not torch.allclose(plain, logits, atol=1e-2)
    # center_unembed moves every logit of a position alike: probabilities unchanged.
    centred = model.processed_copy(center_unembed=True)
    torch.testing.assert_close(
        centred(toks).log_softmax(-1), logits.log_softmax(-1), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(centred.W_U.mean(-1), torch.zeros(cfg.d_model), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="RoPE"):
        model.processed_copy(refactor_factored_attn_matrices=True)
    with pytest.warns(UserWarning, match="center_writing_weights"):
        model.processed_copy(center_writing_weights=True)
    assert folded.process_weights_() is folded  # in place, and folding twice changes nothing
    torch.testing.assert_close(folded(toks), first, rtol=0, atol=0)


# --------------------------------------------------------------------------- generate, tokens
@pytest.mark.parametrize("name", ["mla", "gqa"])
@torch.no_grad()
def test_transformer_lens_generate(name, tokenizer):
    model = build(CONFIGS[name])
    model.set_tokenizer(tokenizer)
    text = "The cat sat on"
    prompt = model.to_tokens(text)
    greedy = model.generate(prompt, 6, do_sample=False, stop_at_eos=False)
    assert greedy.shape == (1, prompt.shape[1] + 6) and torch.equal(
        greedy[:, : prompt.shape[1]], prompt
    )
    seq = prompt
    for _ in range(6):  # greedy is the argmax of a full forward, step by step
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(greedy, seq)
    # Text in, text out (decoded without special tokens), as TransformerLens returns it.
    out = model.generate(text, max_new_tokens=6, do_sample=False, stop_at_eos=False)
    assert out == tokenizer.decode(greedy[0].tolist(), skip_special_tokens=True)
    assert out.startswith(text)
    assert model.generate(text, 6, do_sample=False, stop_at_eos=False, return_type="tokens").equal(
        greedy
    )
    assert torch.equal(
        model.generate(prompt, 6, do_sample=False, stop_at_eos=False, use_past_kv_cache=False),
        greedy,
    )
    assert model.generate(prompt, 6, temperature=0, stop_at_eos=False).equal(greedy)  # labkit's
    texts = model.generate([text, "one two"], 4, do_sample=False, stop_at_eos=False)
    assert texts[0] == model.generate(text, 4, do_sample=False, stop_at_eos=False)
    padded = model.generate([text, "one two"], 4, do_sample=False, return_type="tokens")
    assert padded.shape[0] == 2 and torch.equal(padded[0, -greedy.shape[1] + 2 :], greedy[0, :-2])
    # Sampling: top_k=1 and a tiny top_p are greedy; a seeded generator repeats itself.
    for kwargs in ({"top_k": 1}, {"top_p": 1e-6}):
        sampled = model.generate(prompt, 6, stop_at_eos=False, **kwargs)
        assert torch.equal(sampled, greedy), kwargs
    draws = [
        model.generate(
            prompt,
            6,
            temperature=2.0,
            freq_penalty=0.5,
            repetition_penalty=1.3,
            top_p=0.9,
            generator=torch.Generator().manual_seed(5),
        )  # fmt: skip
        for _ in range(2)
    ]
    assert torch.equal(*draws)
    # stop_at_eos: once a row emits <|endoftext|> it stays there, and decoding ends.
    eot = tokenizer.token_to_id("<|endoftext|>")
    stopped = model.generate(prompt, 6, do_sample=False, eos_token_id=int(greedy[0, -6]))
    assert stopped.shape[1] == prompt.shape[1] + 1
    assert eot == model.tokenizer.eos_token_id
    with pytest.raises(ValueError, match="return_type"):
        model.generate(text, 2, return_type="logits")
    with pytest.raises(ValueError, match="top_p"):
        model.generate(text, 2, top_p=0.0)


def test_prepend_bos_follows_the_config(tokenizer):
    model = build(CONFIGS["mla"])
    model.set_tokenizer(tokenizer)
    text = "The cat sat on the mat."
    ids = tokenizer.encode(text).ids
    eot = tokenizer.token_to_id("<|endoftext|>")
    assert model.cfg.default_prepend_bos is False  # trained without a first token: no BOS
    assert model.to_tokens(text)[0].tolist() == ids
    assert model.to_tokens(text, prepend_bos=True)[0].tolist() == [eot, *ids]
    assert model.bos_token_id == eot
    model.cfg.default_prepend_bos = True  # TransformerLens's default, one switch away
    assert model.to_tokens(text)[0].tolist() == [eot, *ids]
    assert model.to_str_tokens(text)[0] == "<|endoftext|>"
    assert model.to_single_token("cat") == model.to_tokens("cat", prepend_bos=False)[0, 0]
    assert model.to_tokens(text, prepend_bos=False)[0].tolist() == ids
    assert LabModel(model.cfg).cfg.default_prepend_bos  # a model built from the config keeps it
    # A model trained with a first token (an attention sink) prepends it by default.
    sink = LabModel(CONFIGS["mla"].replace(bos_token_id=7))
    sink.set_tokenizer(tokenizer)
    assert sink.cfg.default_prepend_bos and sink.bos_token_id == 7
    assert sink.to_tokens(text)[0].tolist() == [7, *ids]
    assert sink.generate(text, 3, do_sample=False, return_type="tokens")[0, 0] == 7
    sink.cfg.default_prepend_bos = False
    assert sink.to_tokens(text)[0].tolist() == ids
