import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if not torch.cuda.is_available():
    # Triton kernels are tested on the CPU through the interpreter; it must be set before any
    # @triton.jit function is defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from labkit.config import ModelConfig  # noqa: E402


def odd_config(attention: str, **overrides) -> ModelConfig:
    """Deliberately awkward sizes (odd widths, uneven head dims) so layout bugs cannot hide."""
    base = dict(
        attention=attention,
        vocab_size=301,
        d_model=60,
        n_layers=3,
        n_heads=6,
        d_ff=94,
        n_kv_heads=3,
        head_dim=14,
        q_lora_rank=18,
        kv_lora_rank=22,
        qk_nope_head_dim=10,
        qk_rope_head_dim=6,
        v_head_dim=14,
        max_seq_len=64,
        tie_embeddings=False,
    )
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
