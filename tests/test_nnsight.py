"""nnsight is a first-class route into LabModel: read and overwrite the MLA latent in a trace."""

import torch
from conftest import odd_config
from nnsight import NNsight

from labkit.model import LabModel


def test_nnsight_reads_and_overwrites_c_kv():
    model = LabModel(odd_config("mla")).eval()
    toks = torch.randint(0, model.cfg.vocab_size, (2, 13))
    traced = NNsight(model)
    _, cache = model.run_with_cache(toks, names_filter="blocks.1.attn.hook_kv_latent")
    with torch.no_grad():
        with traced.trace(toks):
            c_kv = traced.blocks[1].attn.hook_kv_latent.output.save()
            clean = traced.output.save()
        torch.testing.assert_close(c_kv, cache["blocks.1.attn.hook_kv_latent"])

        # Overwrite the latent of the last 4 positions with another prompt's; compare with the
        # same patch done through a TransformerLens hook.
        donor = torch.randint(0, model.cfg.vocab_size, (2, 13))
        _, donor_cache = model.run_with_cache(donor, names_filter="blocks.1.attn.hook_kv_latent")
        patch = donor_cache["blocks.1.attn.hook_kv_latent"][:, -4:]
        with traced.trace(toks):
            traced.blocks[1].attn.hook_kv_latent.output[:, -4:] = patch
            patched = traced.output.save()

        def tl_patch(x, hook):
            x[:, -4:] = patch
            return x

        expected = model.run_with_hooks(
            toks, fwd_hooks=[("blocks.1.attn.hook_kv_latent", tl_patch)]
        )
    torch.testing.assert_close(patched, expected)
    torch.testing.assert_close(
        patched[:, :-4], clean[:, :-4]
    )  # causal: earlier positions unchanged
    assert (patched[:, -1] - clean[:, -1]).abs().max() > 1e-4


def test_nnsight_reads_the_pattern_in_eager_mode():
    model = LabModel(odd_config("gqa")).eval()
    model.set_attn_impl("eager")
    toks = torch.randint(0, model.cfg.vocab_size, (1, 9))
    traced = NNsight(model)
    with torch.no_grad(), traced.trace(toks):
        pattern = traced.blocks[0].attn.hook_pattern.output.save()
    _, cache = model.run_with_cache(toks, names_filter="blocks.0.attn.hook_pattern")
    torch.testing.assert_close(pattern, cache["blocks.0.attn.hook_pattern"])


def test_analysis_page_example_patches_c_kv_across_prompts_and_measures_the_logit_change():
    """The nnsight example of docs/analysis.md, verbatim in spirit: c_kv of prompt B into prompt A."""
    model = LabModel(odd_config("mla")).eval()
    g = torch.Generator().manual_seed(7)
    prompt_a = torch.randint(0, model.cfg.vocab_size, (1, 12), generator=g)
    prompt_b = torch.randint(0, model.cfg.vocab_size, (1, 12), generator=g)
    nn_model = NNsight(model)
    with torch.no_grad():
        with nn_model.trace(prompt_b):
            c_kv_b = nn_model.blocks[1].attn.hook_kv_latent.output.save()
        with nn_model.trace(prompt_a):
            clean = nn_model.output.save()
        with nn_model.trace(prompt_a):
            nn_model.blocks[1].attn.hook_kv_latent.output[:] = c_kv_b
            patched = nn_model.output.save()
    target = int(clean[0, -1].argmax())
    change = (patched[0, -1, target] - clean[0, -1, target]).item()
    assert abs(change) > 1e-4  # the latent carries information the last position reads
    # The same intervention through a TransformerLens hook gives the same logits.
    via_tl = model.run_with_hooks(
        prompt_a, fwd_hooks=[("blocks.1.attn.hook_kv_latent", lambda x, hook: c_kv_b)]
    )
    torch.testing.assert_close(patched, via_tl)
