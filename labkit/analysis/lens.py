"""The logit lens through TransformerLens's ActivationCache: read the residual stream after each
layer through the final norm and the unembedding (nostalgebraist 2020), and score it as the model's
own next-token prediction.

`logit_lens_loss(model, tokens)` uses `cache.accumulated_resid(apply_ln=True)`, which runs each
accumulated residual through `model.ln_final` with its own statistics, then `model.W_U`; the last
entry is the model's real loss (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def logit_lens_loss(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[list[float], list[str]]:
    """Mean next-token loss (nats) of the logit lens at every residual stream, tokens [batch, pos]
    -> (losses, labels): "0_pre" (the embedding) ... "{L-1}_pre", "final_post"."""
    names = lambda n: n.endswith(("hook_resid_pre", "hook_resid_post"))  # noqa: E731
    _, cache = model.run_with_cache(tokens, names_filter=names)
    stack, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
    targets = tokens[:, 1:].reshape(-1)
    losses = []
    for resid in stack:  # one layer at a time: [batch, pos, vocab] logits, not L of them at once
        logits = (resid @ model.W_U + model.b_U)[:, :-1]
        losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets).item())
    return losses, labels
