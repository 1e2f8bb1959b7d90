"""Triton kernels against a float64 reference: on the CPU through TRITON_INTERPRET=1 (fp32); the
`gpu` marker runs the same cases in bf16 and fp16 on CUDA."""

import math

import pytest
import torch
from conftest import odd_config

from labkit.kernels import attention as kern
from labkit.kernels import flash_attention, mla_decode
from labkit.model import KVCache, LabModel

CUDA = torch.cuda.is_available()


def reference(q, k, v, causal, scale):
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = (q @ k.transpose(-1, -2)) * scale
    t, n = q.shape[2], k.shape[2]
    if causal:
        keep = torch.arange(n)[None, :] <= torch.arange(t)[:, None] + (n - t)
        s = s.masked_fill(~keep.to(s.device), float("-inf"))
    return torch.softmax(s, -1) @ v


@pytest.fixture
def poisoned(monkeypatch):
    """Outputs start as NaN, so any element a kernel fails to write shows up."""
    monkeypatch.setattr(
        kern,
        "_alloc",
        lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device),
    )


# (B, Hq, Hkv, T, S, Dqk, Dv, causal)
CASES = [
    (2, 2, 2, 1, 1, 32, 32, True),
    (2, 4, 2, 17, 17, 24, 40, True),
    (1, 4, 1, 67, 67, 32, 16, True),
    (1, 4, 4, 130, 130, 16, 16, True),
    (2, 4, 4, 1, 17, 32, 32, True),
    (1, 4, 2, 17, 67, 40, 24, True),
    (1, 4, 1, 1, 130, 24, 24, True),
    (2, 2, 1, 5, 33, 16, 48, True),
    (1, 4, 2, 67, 67, 16, 16, False),
    (1, 2, 1, 17, 17, 192, 128, True),  # DeepSeek's MLA head dims, padded to 256
    (1, 2, 2, 17, 30, 256, 64, True),
]


def run_case(case, device="cpu", dtype=torch.float32, tol=(5e-5, 5e-5)):
    b, hq, hkv, t, s, dqk, dv, causal = case
    g = torch.Generator().manual_seed(hash(case) % 2**31)
    q, k, v = (
        torch.randn(*shape, generator=g).to(device, dtype)
        for shape in ((b, hq, t, dqk), (b, hkv, s, dqk), (b, hkv, s, dv))
    )
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    scale = 1 / math.sqrt(dqk)
    out = flash_attention(q, k, v, causal=causal, scale=scale)
    grad = torch.randn(out.shape, generator=g).to(device, dtype)
    out.backward(grad)
    q64, k64, v64 = (x.detach().double().cpu().requires_grad_() for x in (q, k, v))
    ref = reference(q64, k64, v64, causal, scale)
    ref.backward(grad.double().cpu())
    for name, ours, theirs in [
        ("out", out, ref),
        ("dq", q.grad, q64.grad),
        ("dk", k.grad, k64.grad),
        ("dv", v.grad, v64.grad),
    ]:
        assert torch.isfinite(ours).all(), f"{name} has unwritten or non-finite elements"
        torch.testing.assert_close(ours.double().cpu(), theirs, rtol=tol[0], atol=tol[1], msg=name)


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=lambda c: "B{}Hq{}Hkv{}T{}S{}D{}-{}{}".format(*c[:7], "" if c[7] else "-noncausal"),
)
def test_flash_attention_forward_and_backward(case, poisoned):
    run_case(case)


@pytest.mark.parametrize("t", [1, 3])
def test_mla_decode_matches_reference(t, poisoned):
    b, h, s, r, dr = 2, 5, 37, 24, 8
    g = torch.Generator().manual_seed(t)
    ql, qr = torch.randn(b, h, t, r, generator=g), torch.randn(b, h, t, dr, generator=g)
    c, kr = torch.randn(b, s, r, generator=g), torch.randn(b, s, dr, generator=g)
    out = mla_decode(ql, qr, c, kr, 0.17)
    q_full, k_full = torch.cat([ql, qr], -1).double(), torch.cat([c, kr], -1)[:, None].double()
    torch.testing.assert_close(
        out.double(),
        reference(q_full, k_full, c[:, None].double(), True, 0.17),
        rtol=1e-5,
        atol=1e-5,
    )


def test_invalid_shapes_are_clear_errors():
    q, k = torch.zeros(1, 3, 4, 16), torch.zeros(1, 2, 4, 16)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        flash_attention(q, k, k)
    with pytest.raises(ValueError, match="head dims up to 256"):
        flash_attention(
            torch.zeros(1, 2, 4, 288), torch.zeros(1, 2, 4, 288), torch.zeros(1, 2, 4, 16)
        )
    with pytest.raises(ValueError, match="T <= S"):
        flash_attention(
            torch.zeros(1, 2, 8, 16), torch.zeros(1, 2, 4, 16), torch.zeros(1, 2, 4, 16)
        )


@pytest.mark.parametrize("attention", ["gqa", "mla"])
def test_labmodel_fused_paths_match_eager(attention):
    """The dispatch: Triton, SDPA and eager give the same logits and gradients."""
    cfg = odd_config(
        attention,
        n_heads=4,
        d_model=48,
        n_kv_heads=2,
        head_dim=16,
        qk_nope_head_dim=12,
        qk_rope_head_dim=4,
        v_head_dim=20,
        n_layers=2,
        max_seq_len=40,
    )
    toks = torch.randint(0, cfg.vocab_size, (2, 19))
    results = {}
    for impl in ("triton", "sdpa", "eager"):
        torch.manual_seed(0)
        model = LabModel(cfg.replace(attn_impl=impl))
        loss = model(toks, return_type="loss")
        loss.backward()
        results[impl] = (model(toks).detach(), {n: p.grad for n, p in model.named_parameters()})
    eager_logits, eager_grads = results["eager"]
    for impl in ("triton", "sdpa"):
        logits, grads = results[impl]
        assert ((logits - eager_logits).abs().max() / eager_logits.abs().max()).item() <= 1e-5, impl
        for name, g in grads.items():
            torch.testing.assert_close(
                g, eager_grads[name], rtol=1e-4, atol=1e-6, msg=f"{impl} {name}"
            )


def test_cached_decoding_with_triton_matches_full_forward(monkeypatch):
    cfg = odd_config("mla", n_layers=2, max_seq_len=40)
    model = LabModel(cfg).eval()
    toks = torch.randint(0, cfg.vocab_size, (2, 14))
    with torch.no_grad():
        full = model(toks)
        monkeypatch.setenv("LABKIT_ATTN", "triton")  # MLA decode runs mla_decode on the latent
        cache = KVCache(cfg, 2, 14)
        parts = [model(toks[:, :9], cache=cache)] + [
            model(toks[:, i : i + 1], cache=cache) for i in range(9, 14)
        ]
    assert ((torch.cat(parts, 1) - full).abs().max() / full.abs().max()).item() <= 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}Hq{}Hkv{}T{}S{}D{}-{}".format(*c[:7]))
def test_flash_attention_gpu(case, dtype):
    run_case(case, device="cuda", dtype=dtype, tol=(3e-2, 3e-2))


def test_dispatch_decision(monkeypatch):
    from labkit.model import attention_impl

    cfg = odd_config("mla")
    monkeypatch.delenv("LABKIT_ATTN", raising=False)
    assert attention_impl(cfg, torch.device("cuda")) == "triton"  # auto: the kernels on CUDA
    assert attention_impl(cfg, torch.device("cpu")) == "sdpa"
    assert attention_impl(cfg.replace(attn_impl="sdpa"), torch.device("cuda")) == "sdpa"
    monkeypatch.setenv("LABKIT_ATTN", "triton")
    assert attention_impl(cfg.replace(attn_impl="sdpa"), torch.device("cpu")) == "triton"
    monkeypatch.setenv("LABKIT_ATTN", "flash")
    with pytest.raises(ValueError, match="LABKIT_ATTN must be"):
        attention_impl(cfg, torch.device("cpu"))
