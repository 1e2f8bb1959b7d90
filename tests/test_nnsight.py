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
