import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import odd_config
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from labkit.data.tokenizer import train_tokenizer
from labkit.export import from_hf, to_hf
from labkit.model import LabModel

CASES = {
    "gqa": odd_config("gqa"),
    "gqa-tied-mqa": odd_config("gqa", n_kv_heads=1, tie_embeddings=True),
    "mla": odd_config("mla"),
    "mla-fullq-tied": odd_config("mla", q_lora_rank=0, v_head_dim=9, tie_embeddings=True),
}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(
        ["the latent cache of layer seven holds 512 values"] * 20, vocab_size=301
    )


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory, tokenizer):
    torch.manual_seed(1)
    model = LabModel(CASES[request.param]).eval()
    out = to_hf(model, tmp_path_factory.mktemp(request.param), tokenizer=tokenizer)
    return model, out


def test_transformers_gives_the_same_logits(exported):
    model, out = exported
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    expected_class = "LlamaForCausalLM" if model.cfg.attention == "gqa" else "DeepseekV3ForCausalLM"
    assert type(hf).__name__ == expected_class
    if model.cfg.attention == "mla":
        assert all(type(layer.mlp).__name__ == "DeepseekV3MLP" for layer in hf.model.layers)
    toks = torch.randint(0, model.cfg.vocab_size, (2, 23))
    with torch.no_grad():
        ours, theirs = model(toks), hf(toks).logits
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() <= 1e-4


def test_round_trip_through_from_hf(exported):
    model, out = exported
    back = from_hf(out)
    common = ["vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "attention", "max_seq_len"]
    common += ["rope_theta", "norm_eps", "tie_embeddings"]
    if model.cfg.attention == "gqa":
        common += ["n_kv_heads", "head_dim"]
    else:
        common += ["q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim"]
        common += ["v_head_dim"]
    assert {k: getattr(back.cfg, k) for k in common} == {k: getattr(model.cfg, k) for k in common}
    for (name, a), (_, b) in zip(
        model.state_dict().items(), back.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_tokenizer_is_exported(exported, tokenizer):
    _, out = exported
    loaded = PreTrainedTokenizerFast.from_pretrained(out)
    text = "the latent cache"
    assert loaded(text)["input_ids"] == tokenizer.encode(text).ids
    assert loaded.eos_token == "<|endoftext|>"


def test_export_generates_from_the_folder_alone(exported, tokenizer, tmp_path):
    """AutoTokenizer + AutoModelForCausalLM (and a pipeline) on the folder alone: greedy text
    equals LabModel's own greedy decoding, and generation knows labkit's end-of-text token."""
    from transformers import AutoTokenizer, pipeline

    model, out = exported
    alone = tmp_path / "alone"
    shutil.copytree(out, alone)
    hf_tok = AutoTokenizer.from_pretrained(alone)
    hf = AutoModelForCausalLM.from_pretrained(alone, dtype=torch.float32).eval()
    eot = tokenizer.token_to_id("<|endoftext|>")
    assert hf.config.eos_token_id == eot == hf_tok.eos_token_id == hf.generation_config.eos_token_id
    prompt = "the latent cache"
    ids = hf_tok(prompt, return_tensors="pt")["input_ids"]
    theirs = hf.generate(ids, max_new_tokens=8, do_sample=False)
    ours = model.generate(ids, max_new_tokens=8, temperature=0, eos_token_id=eot)
    assert theirs.shape[1] > ids.shape[1]
    assert theirs[0].tolist() == ours[0, : theirs.shape[1]].tolist()
    text = pipeline("text-generation", model=str(alone), device="cpu")(
        prompt, max_new_tokens=8, do_sample=False
    )[0]["generated_text"]
    assert text == hf_tok.decode(theirs[0], skip_special_tokens=True)
    # TransformerLens's generate, text in and text out, is HF's greedy text; both tokenize the
    # prompt without a BOS (a model trained without one: neither to_tokens nor the export adds it).
    model.set_tokenizer(tokenizer)
    assert model.to_tokens(prompt)[0].tolist() == ids[0].tolist()
    assert hf.config.bos_token_id is None and hf_tok.bos_token is None
    assert model.generate(prompt, max_new_tokens=8, do_sample=False) == text
    # The model's own tokenizer is exported when none is passed; from_hf attaches it back.
    again = from_hf(to_hf(model, tmp_path / "own"))
    assert again.to_string(again.to_tokens(prompt)[0]) == prompt


@pytest.mark.parametrize("attention", ["gqa", "mla"])
def test_text_generation_with_a_first_token_equals_hf_greedy(attention, tokenizer, tmp_path):
    """A model trained with a first token (bos_token_id): to_tokens and the export's tokenizer both
    put it first, and TransformerLens's generate gives HF's greedy text."""
    from transformers import AutoTokenizer

    eot = tokenizer.token_to_id("<|endoftext|>")
    torch.manual_seed(2)
    model = LabModel(odd_config(attention, bos_token_id=eot)).eval()
    model.set_tokenizer(tokenizer)
    out = to_hf(model, tmp_path / "bos")
    hf_tok = AutoTokenizer.from_pretrained(out)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    prompt = "the latent cache"
    ids = hf_tok(prompt, return_tensors="pt")["input_ids"]
    assert ids[0, 0] == eot and ids[0].tolist() == model.to_tokens(prompt)[0].tolist()
    theirs = hf_tok.decode(
        hf.generate(ids, max_new_tokens=8, do_sample=False)[0], skip_special_tokens=True
    )
    assert model.generate(prompt, max_new_tokens=8, do_sample=False) == theirs


def test_transformer_bridge_hooks_equal_ours(exported):
    from transformer_lens.model_bridge import TransformerBridge

    model, out = exported
    bridge = TransformerBridge.boot_transformers(str(out), device="cpu")
    toks = torch.randint(0, model.cfg.vocab_size, (2, 17))
    with torch.no_grad():
        bridge_logits, theirs = bridge.run_with_cache(toks)
        our_logits, ours = model.run_with_cache(toks)
    torch.testing.assert_close(bridge_logits, our_logits, rtol=1e-4, atol=1e-5)
    for i in range(model.cfg.n_layers):
        name = f"blocks.{i}.attn.hook_pattern"
        torch.testing.assert_close(theirs[name], ours[name], rtol=1e-4, atol=1e-6)
        if model.cfg.attention == "mla":
            name = f"blocks.{i}.attn.hook_kv_latent"
            torch.testing.assert_close(theirs[name], ours[name], rtol=1e-5, atol=1e-6)


def test_export_config_is_dense_deepseek(exported):
    model, out = exported
    hf = json.loads((Path(out) / "config.json").read_text())
    if model.cfg.attention == "mla":
        assert hf["first_k_dense_replace"] == model.cfg.n_layers
        assert hf["rope_interleave"] is False


def test_from_hf_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        from_hf(tmp_path)


def test_no_unsafe_torch_load():
    """Weights are safetensors; any torch.load in the code base must pass weights_only=True."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in list(root.glob("labkit/**/*.py")) + list(root.glob("pretrain/**/*.py")):
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            if "weights_only=True" not in call:
                offenders.append(f"{path.name}: {call}")
    assert not offenders
