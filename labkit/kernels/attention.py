"""Triton attention kernels.

`flash_attention(q, k, v, causal, scale)`: FlashAttention-2-style training attention for GQA and
MLA. q [B, Hq, T, Dqk], k [B, Hkv, S, Dqk], v [B, Hkv, S, Dv] with Hq % Hkv == 0 -> [B, Hq, T, Dv].
Dqk may differ from Dv (MLA's 192/128), head dims up to 256, T and S arbitrary (masked tails,
T = 1 included), and a causal mask aligned to the end when T < S (decoding with a cache).

Structure (FlashAttention-2; Triton's fused-attention tutorial):
- Forward: online softmax in base 2 (`exp2`, with log2(e) folded into the scale); the log-sum-exp
  is saved in base 2 for the backward. The key loop is split: key blocks every query row of the
  tile sees in full run without any mask; only the blocks on the causal diagonal (and a ragged
  tail of S) apply the mask; blocks above the diagonal are never visited.
- Backward: one kernel per key block computes dK and dV by looping over every query head of its
  KV group (the GQA reduction needs no atomics) and over the query blocks that can see it
  (diagonal blocks masked, the rest not); another computes dQ over the same split as the forward.
- A query/key width that is not a power of two is not padded to the next one when it is the sum
  of two: MLA's 192 runs as a 128-wide plus a 64-wide dot (padding to 256 wastes a quarter of
  QK^T), 48 as 32 + 16.
- Tiles (`BLOCK_M`, `BLOCK_N`), `num_warps` and `num_stages` are chosen per GPU architecture,
  head widths and element size from `TILES` (no autotuning): every entry is compiled for
  sm_80/86/89/90 by `labkit kernels report`, which checks shared memory, registers and spills
  against each architecture's limits (a CI test runs it).

`mla_decode(q_latent, q_rope, c_kv, k_rope, scale)`: attention of new tokens over MLA's latent
cache with W_UK absorbed into the query: scores = q_latent . c_kv + q_rope . k_rope, output = the
attention-weighted c_kv (W_UV is applied by the caller). All heads of a batch element share one
pass over the cache, which is never expanded to per-head keys and values.

On a CPU the kernels run under `TRITON_INTERPRET=1` (fp32; for tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

MAX_HEAD_DIM = 256
LOG2E = 1.4426950408889634


def _alloc(shape, dtype, device) -> torch.Tensor:
    """Output allocation; tests replace it to poison outputs so unwritten elements fail."""
    return torch.empty(shape, dtype=dtype, device=device)


def _pow2(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def split_width(d: int) -> tuple[int, int]:
    """(first, second) power-of-two tile widths covering a head width d: (d', 0) when d rounds
    to a power of two d' (minimum 16), otherwise two powers of two when d, rounded up to a
    multiple of 16, is their sum (192 -> 128 + 64, 48 -> 32 + 16), else the next power of two."""
    d16 = 16 * math.ceil(d / 16)
    first = max(16, 1 << (d16.bit_length() - 1))
    rest = d16 - first
    if rest == 0:
        return first, 0
    if rest & (rest - 1) == 0:
        return first, rest
    return _pow2(d16), 0


# --------------------------------------------------------------------------- dispatch
@dataclass(frozen=True)
class Tile:
    """One kernel launch configuration."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2

    def __str__(self) -> str:
        return f"M{self.block_m} N{self.block_n} w{self.num_warps} s{self.num_stages}"


# Architectures by the shared memory one block may use (the limits, with their source, are in
# labkit/kernels/report.py): sm_80 (A100, A30) 163 KiB; sm_86/sm_89 (RTX 30xx/40xx, A10, A40,
# A6000, L4, L40S) 99 KiB; sm_90 (H100, H200) 227 KiB. Other capabilities take the 99 KiB table
# (the smallest of the four), so they get configurations that fit the tightest of them.
ARCH_CLASS = {80: "sm80", 86: "sm86", 89: "sm86", 90: "sm90"}

WIDTHS = (16, 32, 64, 128, 192, 256)


def _delta_tile(width: int) -> Tile:
    # o and do are read in fp32: 4096 / width rows keep them at 64 registers a thread
    return Tile(min(128, 4096 // triton.next_power_of_2(width)), 0, 4, 1)


def _table(fwd: dict, dkdv: dict, dq: dict) -> dict[tuple[int, int], dict[str, Tile]]:
    """{(width, element bytes): {kernel: Tile}} from per-kernel {(width, bytes): Tile} maps."""
    return {
        key: {"fwd": fwd[key], "delta": _delta_tile(key[0]), "dkdv": dkdv[key], "dq": dq[key]}
        for key in fwd
    }


def _by_width(bf16: dict[int, Tile], fp32: dict[int, Tile]) -> dict[tuple[int, int], Tile]:
    """Expand {largest width: Tile} (ascending) to every width of WIDTHS, per element size."""
    out = {}
    for elem, spec in ((2, bf16), (4, fp32)):
        for w in WIDTHS:
            out[(w, elem)] = spec[min(k for k in spec if k >= w)]
    return out


# Chosen with `labkit kernels report` (shared memory within the limit, no forward spills, as few
# backward spills as found) at FlashAttention-2 / Triton-tutorial-like shapes; not yet tuned for
# speed on a GPU. fp32 inputs (tf32 dots) need twice the shared memory of bf16/fp16 ones.
_FWD_SM86 = {
    64: Tile(128, 64, 8, 3),
    128: Tile(64, 64, 4, 3),
    192: Tile(64, 32, 4, 2),
    256: Tile(64, 32, 8, 2),
}
_FWD_SM80 = {
    64: Tile(128, 64, 8, 3),
    128: Tile(64, 64, 8, 3),
    192: Tile(64, 32, 8, 3),
    256: Tile(64, 64, 8, 2),
}
_FWD_SM90 = {**_FWD_SM86, 192: Tile(64, 32, 4, 3)}
_FWD_FP32 = {
    64: Tile(64, 32, 8, 1),
    192: Tile(32, 32, 4, 1),
    256: Tile(32, 32, 8, 1),
}
_DKDV = {256: Tile(32, 32, 8, 2)}
_DKDV_FP32 = {128: Tile(16, 32, 4, 1), 256: Tile(16, 16, 4, 1)}
_DQ = {64: Tile(64, 64, 8, 2), 128: Tile(64, 32, 4, 2), 256: Tile(32, 32, 8, 2)}
_DQ_FP32 = {128: Tile(32, 32, 4, 1), 256: Tile(16, 16, 4, 1)}

_SM86 = _table(
    _by_width(_FWD_SM86, _FWD_FP32), _by_width(_DKDV, _DKDV_FP32), _by_width(_DQ, _DQ_FP32)
)
_SM80 = _table(
    _by_width(_FWD_SM80, _FWD_FP32), _by_width(_DKDV, _DKDV_FP32), _by_width(_DQ, _DQ_FP32)
)
_SM90 = _table(
    _by_width(_FWD_SM90, _FWD_FP32), _by_width(_DKDV, _DKDV_FP32), _by_width(_DQ, _DQ_FP32)
)
_SM90 = _table(
    _by_width(_FWD_SM90, _FWD_FP32), _by_width(_DKDV, _DKDV_FP32), _by_width(_DQ, _DQ_FP32)
)
# TILES[arch class][(width bucket, element bytes)] = {kernel: Tile}; see `width_bucket`.
TILES: dict[str, dict[tuple[int, int], dict[str, Tile]]] = {
    "sm80": _SM80,
    "sm86": _SM86,
    "sm90": _SM90,
}
MAX_LATENT = 512
# MLA_DECODE_TILES[arch class][(latent width padded, element bytes)] =
#     (most rows per program, cache positions per step, num_warps, num_stages)
_DECODE = {
    (16, 2): (64, 64, 4, 2),
    (32, 2): (64, 64, 4, 2),
    (64, 2): (32, 64, 4, 2),
    (128, 2): (32, 64, 4, 2),
    (256, 2): (16, 32, 8, 2),
    (512, 2): (16, 32, 8, 2),
    (16, 4): (32, 32, 4, 1),
    (32, 4): (32, 32, 4, 1),
    (64, 4): (16, 32, 4, 1),
    (128, 4): (16, 32, 4, 1),
    (256, 4): (16, 16, 8, 1),
    (512, 4): (16, 16, 8, 1),
}
MLA_DECODE_TILES = {"sm80": _DECODE, "sm86": _DECODE, "sm90": _DECODE}


def width_bucket(dqk: int, dv: int) -> int:
    """The row of `TILES` for head widths dqk/dv: the smallest of WIDTHS that holds both the
    query/key tile width (its parts summed) and the value tile width. Each row's configuration
    is compiled at the row's widest case (w/w; 192/128 for the 192 row), and smaller widths need
    no more shared memory or registers."""
    a, b = split_width(dqk)
    need = max(a + b, _pow2(dv))
    return min(w for w in WIDTHS if w >= need)


def attention_tiles(capability: int, dqk: int, dv: int, elem_bytes: int) -> dict[str, Tile]:
    """The launch configuration of each training kernel ("fwd", "delta", "dkdv", "dq") for a
    GPU of compute capability `capability` (e.g. 86), head widths dqk/dv and element size."""
    table = TILES[ARCH_CLASS.get(capability, "sm86")]
    return table[(width_bucket(dqk, dv), 4 if elem_bytes >= 4 else 2)]


def _capability(device: torch.device) -> int:
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


# Under the interpreter (tests): small tiles keep it fast; tests change them to exercise query
# and key blocks of different sizes.
INTERPRETER_TILES = {k: Tile(16, 16) for k in ("fwd", "delta", "dkdv", "dq")}


def _tiles_for(q: torch.Tensor, dqk: int, dv: int) -> dict[str, Tile]:
    if not q.is_cuda:
        return INTERPRETER_TILES
    return attention_tiles(_capability(q.device), dqk, dv, q.element_size())


# --------------------------------------------------------------------------- forward
@triton.jit
def _fwd_inner(
    acc, l_i, m_i, q, q2, k_ptr, v_ptr, sks, svs, q_pos, S, lo, hi, qk_scale,
    offs_n, offs_dq, offs_dq2, offs_dv,
    DQK: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK2: tl.constexpr,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr,
):  # fmt: skip
    """Key blocks [lo, hi) of the online softmax (base 2). MASKED: apply the causal mask and the
    ragged end of S; otherwise every score of every block is visible."""
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        col_ok = cols < S
        k = tl.load(
            k_ptr + cols[:, None] * sks + offs_dq[None, :],
            mask=col_ok[:, None] & (offs_dq[None, :] < DQK), other=0.0,
        )  # fmt: skip
        s = tl.dot(q, tl.trans(k))
        if BLOCK_DQK2 > 0:
            k2 = tl.load(
                k_ptr + cols[:, None] * sks + offs_dq2[None, :],
                mask=col_ok[:, None] & (offs_dq2[None, :] < DQK), other=0.0,
            )  # fmt: skip
            s += tl.dot(q2, tl.trans(k2))
        s = s * qk_scale
        if MASKED:
            keep = col_ok[None, :]
            if CAUSAL:
                keep = keep & (cols[None, :] <= q_pos[:, None])
            s = tl.where(keep, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # fully masked rows stay finite
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = m_new
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_ptr + cols[:, None] * svs + offs_dv[None, :],
            mask=col_ok[:, None] & (offs_dv[None, :] < DV), other=0.0,
        )  # fmt: skip
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE,
    sqb, sqh, sqt, skb, skh, sks, svb, svh, svs, sob, soh, sot,
    T, S, HQ, GROUPS, qk_scale,
    DQK: tl.constexpr, DV: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr,
    BLOCK_DQK2: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    hk = h // GROUPS
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_dq = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < T
    q_ptr = Q + b * sqb + h * sqh + offs_m[:, None] * sqt
    q = tl.load(
        q_ptr + offs_dq[None, :], mask=row_ok[:, None] & (offs_dq[None, :] < DQK), other=0.0
    )
    if BLOCK_DQK2 > 0:  # the second part of a width that is a sum of two powers of two
        offs_dq2 = BLOCK_DQK + tl.arange(0, BLOCK_DQK2)
        q2 = tl.load(
            q_ptr + offs_dq2[None, :], mask=row_ok[:, None] & (offs_dq2[None, :] < DQK), other=0.0
        )
    else:
        offs_dq2 = offs_dq
        q2 = q
    q_pos = offs_m + (S - T)  # causal alignment to the end of the keys
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    if CAUSAL:
        # keys [0, split) are visible to every row of this block; [split, hi) is the diagonal
        split = ((m0 + (S - T) + 1) // BLOCK_N) * BLOCK_N
        hi = tl.minimum(S, m0 + BLOCK_M + (S - T))
    else:
        split = (S // BLOCK_N) * BLOCK_N
        hi = S
    k_ptr = K + b * skb + hk * skh
    v_ptr = V + b * svb + hk * svh
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, q2, k_ptr, v_ptr, sks, svs, q_pos, S, 0, split, qk_scale,
        offs_n, offs_dq, offs_dq2, offs_dv, DQK, DV, BLOCK_N, BLOCK_DQK2, False, CAUSAL,
    )  # fmt: skip
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, q2, k_ptr, v_ptr, sks, svs, q_pos, S, split, hi, qk_scale,
        offs_n, offs_dq, offs_dq2, offs_dv, DQK, DV, BLOCK_N, BLOCK_DQK2, True, CAUSAL,
    )  # fmt: skip
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    acc = acc / l_safe[:, None]
    tl.store(
        O + b * sob + h * soh + offs_m[:, None] * sot + offs_dv[None, :],
        acc.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < DV),
    )  # fmt: skip
    tl.store(LSE + bh * T + offs_m, m_i + tl.math.log2(l_safe), mask=row_ok)  # base 2


# --------------------------------------------------------------------------- backward
@triton.jit
def _delta_kernel(O, DO, DELTA, T, DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_DV)
    mask = (offs_m[:, None] < T) & (offs_d[None, :] < DV)
    base = bh * T * DV + offs_m[:, None] * DV + offs_d[None, :]
    o = tl.load(O + base, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + base, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + bh * T + offs_m, tl.sum(o * do, 1), mask=offs_m < T)


@triton.jit
def _dkdv_inner(
    dk, dk2, dv, k, k2, v, Q, DO, LSE, DELTA, bh, cols, col_ok, off, T, lo, hi, qk_scale,
    offs_m, offs_dq, offs_dq2, offs_dv,
    DQK: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DQK2: tl.constexpr,
    MASKED: tl.constexpr,
):  # fmt: skip
    """Query blocks [lo, hi) against one key block. MASKED: the causal diagonal. Rows past T
    load zeros (do = 0, delta = 0), so they add nothing to dK or dV without a mask."""
    # Scores are formed transposed (keys x queries, as in Triton's tutorial), so P and dS feed
    # the dK/dV products without a register transpose.
    for start in range(lo, hi, BLOCK_M):
        rows = start + offs_m
        row_ok = rows < T
        q_ptr = Q + (bh * T + rows[None, :]) * DQK
        q_t = tl.load(
            q_ptr + offs_dq[:, None], mask=row_ok[None, :] & (offs_dq[:, None] < DQK), other=0.0
        )
        s_t = tl.dot(k, q_t)
        if BLOCK_DQK2 > 0:
            q2_t = tl.load(
                q_ptr + offs_dq2[:, None],
                mask=row_ok[None, :] & (offs_dq2[:, None] < DQK),
                other=0.0,
            )
            s_t += tl.dot(k2, q2_t)
        lse = tl.load(LSE + bh * T + rows, mask=row_ok, other=0.0)
        p_t = tl.math.exp2(s_t * qk_scale - lse[None, :])
        if MASKED:
            keep = row_ok[None, :] & col_ok[:, None] & (cols[:, None] <= (rows + off)[None, :])
            p_t = tl.where(keep, p_t, 0.0)
        do = tl.load(
            DO + (bh * T + rows[:, None]) * DV + offs_dv[None, :],
            mask=row_ok[:, None] & (offs_dv[None, :] < DV), other=0.0,
        )  # fmt: skip
        dv += tl.dot(p_t.to(do.dtype), do)
        delta = tl.load(DELTA + bh * T + rows, mask=row_ok, other=0.0)
        dp_t = tl.dot(v, tl.trans(do))
        ds_t = (p_t * (dp_t - delta[None, :])).to(q_t.dtype)
        dk += tl.dot(ds_t, tl.trans(q_t))
        if BLOCK_DQK2 > 0:
            dk2 += tl.dot(ds_t, tl.trans(q2_t))
    return dk, dk2, dv


@triton.jit
def _dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV_,
    T, S, HQ, HKV, GROUPS, scale, qk_scale,
    DQK: tl.constexpr, DV: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr,
    BLOCK_DQK2: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // HKV
    hk = bhk % HKV
    n0 = pid_n * BLOCK_N
    cols = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_dq = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    col_ok = cols < S
    kv_base = (b * HKV + hk) * S
    k_ptr = K + (kv_base + cols[:, None]) * DQK
    k = tl.load(
        k_ptr + offs_dq[None, :], mask=col_ok[:, None] & (offs_dq[None, :] < DQK), other=0.0
    )
    dk = tl.zeros([BLOCK_N, BLOCK_DQK], tl.float32)
    if BLOCK_DQK2 > 0:
        offs_dq2 = BLOCK_DQK + tl.arange(0, BLOCK_DQK2)
        k2 = tl.load(
            k_ptr + offs_dq2[None, :], mask=col_ok[:, None] & (offs_dq2[None, :] < DQK), other=0.0
        )
        dk2 = tl.zeros([BLOCK_N, BLOCK_DQK2], tl.float32)
    else:
        offs_dq2 = offs_dq
        k2 = k
        dk2 = tl.zeros([1, 1], tl.float32)  # unused: no second part
    v = tl.load(
        V + (kv_base + cols[:, None]) * DV + offs_dv[None, :],
        mask=col_ok[:, None] & (offs_dv[None, :] < DV),
        other=0.0,
    )
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    off = S - T
    if CAUSAL:
        # query blocks before `lo` cannot see this key block; from `full` on they see all of it
        lo = (tl.maximum(0, n0 - off) // BLOCK_M) * BLOCK_M
        full = tl.cdiv(tl.maximum(0, n0 + BLOCK_N - 1 - off), BLOCK_M) * BLOCK_M
        full = tl.minimum(tl.maximum(full, lo), T)
    else:
        lo = 0
        full = 0
    for g in range(0, GROUPS):  # every query head that shares this KV head
        bh = b * HQ + hk * GROUPS + g
        dk, dk2, dv = _dkdv_inner(
            dk, dk2, dv, k, k2, v, Q, DO, LSE, DELTA, bh, cols, col_ok, off, T, lo, full,
            qk_scale, offs_m, offs_dq, offs_dq2, offs_dv, DQK, DV, BLOCK_M, BLOCK_DQK2, True,
        )  # fmt: skip
        dk, dk2, dv = _dkdv_inner(
            dk, dk2, dv, k, k2, v, Q, DO, LSE, DELTA, bh, cols, col_ok, off, T, full, T,
            qk_scale, offs_m, offs_dq, offs_dq2, offs_dv, DQK, DV, BLOCK_M, BLOCK_DQK2, False,
        )  # fmt: skip
    dk_ptr = DK + (kv_base + cols[:, None]) * DQK
    tl.store(
        dk_ptr + offs_dq[None, :],
        (dk * scale).to(DK.dtype.element_ty),
        mask=col_ok[:, None] & (offs_dq[None, :] < DQK),
    )
    if BLOCK_DQK2 > 0:
        tl.store(
            dk_ptr + offs_dq2[None, :],
            (dk2 * scale).to(DK.dtype.element_ty),
            mask=col_ok[:, None] & (offs_dq2[None, :] < DQK),
        )
    tl.store(
        DV_ + (kv_base + cols[:, None]) * DV + offs_dv[None, :],
        dv.to(DV_.dtype.element_ty),
        mask=col_ok[:, None] & (offs_dv[None, :] < DV),
    )


@triton.jit
def _dq_inner(
    dq, dq2, q, q2, do, lse, delta, K, V, kv_base, rows, row_ok, off, S, lo, hi, qk_scale,
    offs_n, offs_dq, offs_dq2, offs_dv,
    DQK: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK2: tl.constexpr,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr,
):  # fmt: skip
    """Key blocks [lo, hi) for one query block. MASKED: the causal diagonal and the ragged end
    of S; keys past S load zeros, so they add nothing to dQ."""
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        col_ok = cols < S
        k_ptr = K + (kv_base + cols[:, None]) * DQK
        k = tl.load(
            k_ptr + offs_dq[None, :], mask=col_ok[:, None] & (offs_dq[None, :] < DQK), other=0.0
        )
        s = tl.dot(q, tl.trans(k))
        if BLOCK_DQK2 > 0:
            k2 = tl.load(
                k_ptr + offs_dq2[None, :],
                mask=col_ok[:, None] & (offs_dq2[None, :] < DQK),
                other=0.0,
            )
            s += tl.dot(q2, tl.trans(k2))
        v = tl.load(
            V + (kv_base + cols[:, None]) * DV + offs_dv[None, :],
            mask=col_ok[:, None] & (offs_dv[None, :] < DV), other=0.0,
        )  # fmt: skip
        p = tl.math.exp2(s * qk_scale - lse[:, None])
        if MASKED:
            keep = row_ok[:, None] & col_ok[None, :]
            if CAUSAL:
                keep = keep & (cols[None, :] <= (rows + off)[:, None])
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = (p * (dp - delta[:, None])).to(k.dtype)
        dq += tl.dot(ds, k)
        if BLOCK_DQK2 > 0:
            dq2 += tl.dot(ds, k2)
    return dq, dq2


@triton.jit
def _dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    T, S, HQ, HKV, GROUPS, scale, qk_scale,
    DQK: tl.constexpr, DV: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr,
    BLOCK_DQK2: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    hk = h // GROUPS
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_dq = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = rows < T
    q_ptr = Q + (bh * T + rows[:, None]) * DQK
    q = tl.load(
        q_ptr + offs_dq[None, :], mask=row_ok[:, None] & (offs_dq[None, :] < DQK), other=0.0
    )
    dq = tl.zeros([BLOCK_M, BLOCK_DQK], tl.float32)
    if BLOCK_DQK2 > 0:
        offs_dq2 = BLOCK_DQK + tl.arange(0, BLOCK_DQK2)
        q2 = tl.load(
            q_ptr + offs_dq2[None, :], mask=row_ok[:, None] & (offs_dq2[None, :] < DQK), other=0.0
        )
        dq2 = tl.zeros([BLOCK_M, BLOCK_DQK2], tl.float32)
    else:
        offs_dq2 = offs_dq
        q2 = q
        dq2 = tl.zeros([1, 1], tl.float32)  # unused: no second part
    do = tl.load(
        DO + (bh * T + rows[:, None]) * DV + offs_dv[None, :],
        mask=row_ok[:, None] & (offs_dv[None, :] < DV),
        other=0.0,
    )
    lse = tl.load(LSE + bh * T + rows, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + bh * T + rows, mask=row_ok, other=0.0)
    kv_base = (b * HKV + hk) * S
    off = S - T
    if CAUSAL:
        split = ((m0 + off + 1) // BLOCK_N) * BLOCK_N
        hi = tl.minimum(S, m0 + BLOCK_M + off)
    else:
        split = (S // BLOCK_N) * BLOCK_N
        hi = S
    dq, dq2 = _dq_inner(
        dq, dq2, q, q2, do, lse, delta, K, V, kv_base, rows, row_ok, off, S, 0, split, qk_scale,
        offs_n, offs_dq, offs_dq2, offs_dv, DQK, DV, BLOCK_N, BLOCK_DQK2, False, CAUSAL,
    )  # fmt: skip
    dq, dq2 = _dq_inner(
        dq, dq2, q, q2, do, lse, delta, K, V, kv_base, rows, row_ok, off, S, split, hi, qk_scale,
        offs_n, offs_dq, offs_dq2, offs_dv, DQK, DV, BLOCK_N, BLOCK_DQK2, True, CAUSAL,
    )  # fmt: skip
    dq_ptr = DQ + (bh * T + rows[:, None]) * DQK
    tl.store(
        dq_ptr + offs_dq[None, :],
        (dq * scale).to(DQ.dtype.element_ty),
        mask=row_ok[:, None] & (offs_dq[None, :] < DQK),
    )
    if BLOCK_DQK2 > 0:
        tl.store(
            dq_ptr + offs_dq2[None, :],
            (dq2 * scale).to(DQ.dtype.element_ty),
            mask=row_ok[:, None] & (offs_dq2[None, :] < DQK),
        )


# --------------------------------------------------------------------------- autograd
def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "flash_attention expects q [B, Hq, T, D], k [B, Hkv, S, D], v [B, Hkv, S, Dv]"
        )
    (b, hq, t, dqk), (bk, hkv, s, dk), (bv, hv, sv, dv) = q.shape, k.shape, v.shape
    if bk != b or bv != b or hv != hkv or sv != s or dk != dqk:
        raise ValueError(
            f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    if max(dqk, dv) > MAX_HEAD_DIM:
        raise ValueError(f"head dims up to {MAX_HEAD_DIM} are supported, got {dqk}/{dv}")
    if causal and t > s:
        raise ValueError(
            f"causal attention needs T <= S (queries end-aligned to keys), got {t} > {s}"
        )


def _launch(tile: Tile) -> dict[str, int]:
    return dict(
        BLOCK_M=tile.block_m,
        BLOCK_N=tile.block_n,
        num_warps=tile.num_warps,
        num_stages=tile.num_stages,
    )


def _widths(dqk: int, dv: int) -> dict[str, int]:
    first, second = split_width(dqk)
    return dict(DQK=dqk, DV=dv, BLOCK_DQK=first, BLOCK_DQK2=second, BLOCK_DV=_pow2(dv))


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        b, hq, t, dqk = q.shape
        hkv, s, dv = k.shape[1], k.shape[2], v.shape[3]
        tiles = _tiles_for(q, dqk, dv)
        o = _alloc((b, hq, t, dv), q.dtype, q.device)
        lse = _alloc((b, hq, t), torch.float32, q.device)  # base 2
        grid = (triton.cdiv(t, tiles["fwd"].block_m), b * hq)
        _fwd_kernel[grid](
            q, k, v, o, lse,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
            t, s, hq, hq // hkv, scale * LOG2E,
            CAUSAL=causal, **_widths(dqk, dv), **_launch(tiles["fwd"]),
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale = causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        do = do.contiguous()
        b, hq, t, dqk = q.shape
        hkv, s, dv = k.shape[1], k.shape[2], v.shape[3]
        tiles = _tiles_for(q, dqk, dv)
        widths = _widths(dqk, dv)
        delta = _alloc((b, hq, t), torch.float32, q.device)
        d_tile = tiles["delta"]
        _delta_kernel[(triton.cdiv(t, d_tile.block_m), b * hq)](
            o, do, delta, t, DV=dv, BLOCK_M=d_tile.block_m, BLOCK_DV=widths["BLOCK_DV"],
            num_warps=d_tile.num_warps, num_stages=d_tile.num_stages,
        )  # fmt: skip
        dq = _alloc(q.shape, q.dtype, q.device)
        dk = _alloc(k.shape, k.dtype, k.device)
        dv_ = _alloc(v.shape, v.dtype, v.device)
        args = (t, s, hq, hkv, hq // hkv, ctx.scale, ctx.scale * LOG2E)
        kv_tile, q_tile = tiles["dkdv"], tiles["dq"]
        _dkdv_kernel[(triton.cdiv(s, kv_tile.block_n), b * hkv)](
            q, k, v, do, lse, delta, dk, dv_, *args,
            CAUSAL=ctx.causal, **widths, **_launch(kv_tile),
        )  # fmt: skip
        _dq_kernel[(triton.cdiv(t, q_tile.block_m), b * hq)](
            q, k, v, do, lse, delta, dq, *args, CAUSAL=ctx.causal, **widths, **_launch(q_tile)
        )
        return dq, dk, dv_, None, None


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale) v with GQA broadcasting; see the module docstring."""
    _check(q, k, v, causal)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return _FlashAttention.apply(q, k, v, causal, scale)


# --------------------------------------------------------------------------- MLA decode
@triton.jit
def _mla_decode_inner(
    acc, l_i, m_i, ql, qr, C, KR, b, q_pos, row_ok, S, lo, hi, qk_scale, offs_n, offs_r, offs_dr,
    R: tl.constexpr, DR: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
):  # fmt: skip
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        col_ok = cols < S
        c = tl.load(
            C + (b * S + cols[:, None]) * R + offs_r[None, :],
            mask=col_ok[:, None] & (offs_r[None, :] < R), other=0.0,
        )  # fmt: skip
        kr = tl.load(
            KR + (b * S + cols[:, None]) * DR + offs_dr[None, :],
            mask=col_ok[:, None] & (offs_dr[None, :] < DR), other=0.0,
        )  # fmt: skip
        s = (tl.dot(ql, tl.trans(c)) + tl.dot(qr, tl.trans(kr))) * qk_scale
        if MASKED:
            keep = row_ok[:, None] & col_ok[None, :] & (cols[None, :] <= q_pos[:, None])
            s = tl.where(keep, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = m_new
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(c.dtype), c)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _mla_decode_kernel(
    QL, QR, C, KR, O,
    T, S, H, qk_scale,
    R: tl.constexpr, DR: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_DR: tl.constexpr,
):  # fmt: skip
    # One program: a block of (head, query) rows of one batch element; rows share every cache read.
    pid = tl.program_id(0)
    b = tl.program_id(1)
    rows = pid * BLOCK_H + tl.arange(0, BLOCK_H)  # row = head * T + t
    row_ok = rows < H * T
    t = rows % T
    offs_n = tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    offs_dr = tl.arange(0, BLOCK_DR)
    ql = tl.load(
        QL + (b * H * T + rows[:, None]) * R + offs_r[None, :],
        mask=row_ok[:, None] & (offs_r[None, :] < R),
        other=0.0,
    )
    qr = tl.load(
        QR + (b * H * T + rows[:, None]) * DR + offs_dr[None, :],
        mask=row_ok[:, None] & (offs_dr[None, :] < DR),
        other=0.0,
    )
    q_pos = t + (S - T)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_R], tl.float32)
    split = ((S - T + 1) // BLOCK_N) * BLOCK_N  # every new token sees the cache before it
    acc, l_i, m_i = _mla_decode_inner(
        acc, l_i, m_i, ql, qr, C, KR, b, q_pos, row_ok, S, 0, split, qk_scale, offs_n, offs_r,
        offs_dr, R, DR, BLOCK_N, False,
    )  # fmt: skip
    acc, l_i, m_i = _mla_decode_inner(
        acc, l_i, m_i, ql, qr, C, KR, b, q_pos, row_ok, S, split, S, qk_scale, offs_n, offs_r,
        offs_dr, R, DR, BLOCK_N, True,
    )  # fmt: skip
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    tl.store(
        O + (b * H * T + rows[:, None]) * R + offs_r[None, :],
        (acc / l_safe[:, None]).to(O.dtype.element_ty),
        mask=row_ok[:, None] & (offs_r[None, :] < R),
    )


def mla_decode_tile(capability: int, rank: int, rows: int, elem_bytes: int) -> Tile:
    """Launch configuration of `_mla_decode_kernel` for a latent width `rank`, `rows` = heads x
    new tokens of one batch element and element size: block_m (rows per program) is `rows`
    rounded up to 16/32/64 and capped by the table, block_n the cache positions per step."""
    table = MLA_DECODE_TILES[ARCH_CLASS.get(capability, "sm86")]
    max_rows, block_n, warps, stages = table[(_pow2(rank), 4 if elem_bytes >= 4 else 2)]
    block_h = min(max_rows, max(16, triton.next_power_of_2(rows)))
    return Tile(block_h, block_n, warps, stages)


def mla_decode(
    q_latent: torch.Tensor,
    q_rope: torch.Tensor,
    c_kv: torch.Tensor,
    k_rope: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q_latent [B, H, T, R] (q_nope with W_UK absorbed), q_rope [B, H, T, Dr], c_kv [B, S, R],
    k_rope [B, S, Dr] -> attention-weighted latent [B, H, T, R]; causal, end-aligned (T <= S)."""
    b, h, t, r = q_latent.shape
    s, dr = c_kv.shape[1], k_rope.shape[-1]
    if q_rope.shape != (b, h, t, dr) or c_kv.shape != (b, s, r) or k_rope.shape != (b, s, dr):
        raise ValueError(
            f"mla_decode shapes: q_latent {tuple(q_latent.shape)}, q_rope {tuple(q_rope.shape)}, "
            f"c_kv {tuple(c_kv.shape)}, k_rope {tuple(k_rope.shape)}"
        )
    if t > s:
        raise ValueError(f"mla_decode needs T <= S, got {t} > {s}")
    if r > MAX_LATENT and q_latent.is_cuda:  # no checked GPU tile beyond it
        raise ValueError(f"mla_decode supports latent widths up to {MAX_LATENT} on GPU, got {r}")
    dtype = torch.promote_types(q_latent.dtype, c_kv.dtype)
    ql, qr = q_latent.to(dtype).contiguous(), q_rope.to(dtype).contiguous()
    c, kr = c_kv.to(dtype).contiguous(), k_rope.to(dtype).contiguous()
    out = _alloc((b, h, t, r), dtype, q_latent.device)
    if q_latent.is_cuda:
        tile = mla_decode_tile(_capability(q_latent.device), r, h * t, ql.element_size())
    else:
        tile = INTERPRETER_TILES["fwd"]
    grid = (triton.cdiv(h * t, tile.block_m), b)
    _mla_decode_kernel[grid](
        ql, qr, c, kr, out, t, s, h, scale * LOG2E,
        R=r, DR=dr, BLOCK_H=tile.block_m, BLOCK_N=tile.block_n, BLOCK_R=_pow2(r),
        BLOCK_DR=_pow2(dr), num_warps=tile.num_warps, num_stages=tile.num_stages,
    )  # fmt: skip
    return out
