"""Correctness of the training kernels against a float64 reference, forward and dQ/dK/dV.

Shared by the tests (the CPU interpreter in fp32; the `gpu` marker in bf16/fp16) and by
`make gpu-check`, which runs `python -m labkit.kernels.check` on a lent GPU even where pytest or
labkit's other dependencies cannot be installed (it needs only torch and triton).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator

import torch

from labkit.kernels import attention as kern
from labkit.kernels.attention import flash_attention

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
    (1, 2, 1, 17, 17, 192, 128, True),  # DeepSeek's MLA head dims: 128 + 64 wide QK^T
    (1, 2, 2, 17, 30, 256, 64, True),
]
# Shapes for the unmasked/diagonal split of the key and query loops: T and S not multiples of a
# tile, T < S with an offset that is not one either, non-causal with a ragged S, and query/key
# widths computed as two dots (48 = 32 + 16, 40 = 32 + 16, MLA's 192 = 128 + 64).
SPLIT_CASES = [
    (1, 2, 1, 45, 45, 48, 32, True),
    (1, 4, 2, 19, 50, 40, 24, True),
    (1, 2, 2, 37, 37, 16, 16, False),
    (1, 2, 1, 40, 40, 192, 128, True),
]
# On a GPU the dispatch's own tiles (64-128 rows) meet the diagonal at these lengths.
GPU_CASES = [(2, 8, 2, 300, 300, 64, 64, True), (1, 4, 4, 257, 513, 192, 128, True)]


def case_id(case: tuple) -> str:
    return "B{}Hq{}Hkv{}T{}S{}D{}-{}".format(*case[:7]) + ("" if case[7] else "-noncausal")


def reference(q, k, v, causal: bool, scale: float) -> torch.Tensor:
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = (q @ k.transpose(-1, -2)) * scale
    t, n = q.shape[2], k.shape[2]
    if causal:
        keep = torch.arange(n)[None, :] <= torch.arange(t)[:, None] + (n - t)
        s = s.masked_fill(~keep.to(s.device), float("-inf"))
    return torch.softmax(s, -1) @ v


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
    """Outputs start as NaN, so any element a kernel fails to write shows up."""
    alloc = kern._alloc
    kern._alloc = lambda shape, dtype, device: torch.full(
        shape, float("nan"), dtype=dtype, device=device
    )
    try:
        yield
    finally:
        kern._alloc = alloc


def run_case(case, device="cpu", dtype=torch.float32, tol=(5e-5, 5e-5)) -> None:
    """Forward and dQ/dK/dV of one case against float64; raises AssertionError on a mismatch."""
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


def main() -> int:
    """Every case in bf16 and fp16 on the GPU (tolerance 3e-2, as the `gpu` tests)."""
    if not torch.cuda.is_available():
        print("labkit.kernels.check: error: needs a CUDA device", file=sys.stderr)
        return 2
    failures = 0
    for dtype in (torch.bfloat16, torch.float16):
        for case in CASES + SPLIT_CASES + GPU_CASES:
            try:
                with poisoned_outputs():
                    run_case(case, device="cuda", dtype=dtype, tol=(3e-2, 3e-2))
                verdict = "ok"
            except AssertionError as err:
                failures += 1
                verdict = "FAIL: " + str(err).strip().splitlines()[0]
            print(f"{str(dtype).removeprefix('torch.')} {case_id(case)}: {verdict}", flush=True)
    total = 2 * len(CASES + SPLIT_CASES + GPU_CASES)
    print(
        f"{total - failures}/{total} kernel cases match float64 on {torch.cuda.get_device_name()}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
