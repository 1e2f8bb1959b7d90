"""Triton attention kernels.

`flash_attention(q, k, v, causal, scale)`: FlashAttention-2-style training attention for GQA and
MLA. q [B, Hq, T, Dqk], k [B, Hkv, S, Dqk], v [B, Hkv, S, Dv] with Hq % Hkv == 0 -> [B, Hq, T, Dv].
Dqk may differ from Dv (MLA's 192/128), head dims up to 256 are padded to the next power of two,
T and S are arbitrary (masked tails, T = 1 included), and a causal mask is aligned to the end when
T < S (decoding with a cache). Forward: online softmax, log-sum-exp saved. Backward: one kernel
per key block computes dK and dV by looping over every query head of its KV group (the GQA
reduction needs no atomics), another computes dQ.

`mla_decode(q_latent, q_rope, c_kv, k_rope, scale)`: attention of new tokens over MLA's latent
cache with W_UK absorbed into the query: scores = q_latent . c_kv + q_rope . k_rope, output = the
attention-weighted c_kv (W_UV is applied by the caller). All heads of a batch element share one
pass over the cache, which is never expanded to per-head keys and values.

On a CPU the kernels run under `TRITON_INTERPRET=1` (fp32; for tests).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

MAX_HEAD_DIM = 256


def _alloc(shape, dtype, device) -> torch.Tensor:
    """Output allocation; tests replace it to poison outputs so unwritten elements fail."""
    return torch.empty(shape, dtype=dtype, device=device)


def _pow2(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _blocks(q: torch.Tensor) -> tuple[int, int]:
    if not q.is_cuda:  # the interpreter: small tiles keep tests fast
        return 16, 16
    d = q.shape[-1]
    return (128, 64) if d <= 64 else (64, 64) if d <= 128 else (64, 32)


# --------------------------------------------------------------------------- forward
@triton.jit
def _online_softmax_step(s, m_i, l_i, acc, values):
    """One key block of the online softmax: fold masked scores s [M, N] (-inf where masked) into
    the running max m_i, normaliser l_i and output acc [M, D] with values [N, D]."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # fully masked rows stay finite
    p = tl.exp(s - m_safe[:, None])
    alpha = tl.exp(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(values.dtype), values)
    return m_new, l_i, acc


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE,
    sqb, sqh, sqt, skb, skh, sks, svb, svh, svs, sob, soh, sot,
    T, S, HQ, GROUPS, scale,
    DQK: tl.constexpr, DV: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    hk = h // GROUPS
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_dq = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < T
    q = tl.load(
        Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_dq[None, :],
        mask=row_ok[:, None] & (offs_dq[None, :] < DQK), other=0.0,
    )  # fmt: skip
    q_pos = offs_m + (S - T)  # causal alignment to the end of the keys
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    hi = S
    if CAUSAL:
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M + (S - T))
    for start in range(0, hi, BLOCK_N):
        cols = start + offs_n
        col_ok = cols < S
        k = tl.load(
            K + b * skb + hk * skh + cols[:, None] * sks + offs_dq[None, :],
            mask=col_ok[:, None] & (offs_dq[None, :] < DQK), other=0.0,
        )  # fmt: skip
        s = tl.dot(q, tl.trans(k)) * scale
        keep = col_ok[None, :] & row_ok[:, None]
        if CAUSAL:
            keep = keep & (cols[None, :] <= q_pos[:, None])
        s = tl.where(keep, s, float("-inf"))
        v = tl.load(
            V + b * svb + hk * svh + cols[:, None] * svs + offs_dv[None, :],
            mask=col_ok[:, None] & (offs_dv[None, :] < DV), other=0.0,
        )  # fmt: skip
        m_i, l_i, acc = _online_softmax_step(s, m_i, l_i, acc, v)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    acc = acc / l_safe[:, None]
    tl.store(
        O + b * sob + h * soh + offs_m[:, None] * sot + offs_dv[None, :],
        acc.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < DV),
    )  # fmt: skip
    tl.store(LSE + bh * T + offs_m, m_i + tl.log(l_safe), mask=row_ok)


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
def _dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV_,
    T, S, HQ, HKV, GROUPS, scale,
    DQK: tl.constexpr, DV: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // HKV
    hk = bhk % HKV
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_dq = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    col_ok = cols < S
    kv_base = (b * HKV + hk) * S
    k = tl.load(
        K + (kv_base + cols[:, None]) * DQK + offs_dq[None, :],
        mask=col_ok[:, None] & (offs_dq[None, :] < DQK),
        other=0.0,
    )
    v = tl.load(
        V + (kv_base + cols[:, None]) * DV + offs_dv[None, :],
        mask=col_ok[:, None] & (offs_dv[None, :] < DV),
        other=0.0,
    )
    dk = tl.zeros([BLOCK_N, BLOCK_DQK], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    lo = 0
    if CAUSAL:  # queries before this key block cannot see it
        lo = tl.maximum(0, pid_n * BLOCK_N - (S - T))
        lo = (lo // BLOCK_M) * BLOCK_M
    for g in range(0, GROUPS):  # every query head that shares this KV head
        h = hk * GROUPS + g
        bh = b * HQ + h
        for start in range(lo, T, BLOCK_M):
            rows = start + offs_m
            row_ok = rows < T
            q = tl.load(
                Q + (bh * T + rows[:, None]) * DQK + offs_dq[None, :],
                mask=row_ok[:, None] & (offs_dq[None, :] < DQK),
                other=0.0,
            )
            do = tl.load(
                DO + (bh * T + rows[:, None]) * DV + offs_dv[None, :],
                mask=row_ok[:, None] & (offs_dv[None, :] < DV),
                other=0.0,
            )
            lse = tl.load(LSE + bh * T + rows, mask=row_ok, other=0.0)
            delta = tl.load(DELTA + bh * T + rows, mask=row_ok, other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale
            keep = row_ok[:, None] & col_ok[None, :]
            if CAUSAL:
                keep = keep & (cols[None, :] <= (rows + (S - T))[:, None])
            p = tl.where(keep, tl.exp(s - lse[:, None]), 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do)
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    tl.store(
        DK + (kv_base + cols[:, None]) * DQK + offs_dq[None, :],
        (dk * scale).to(DK.dtype.element_ty),
        mask=col_ok[:, None] & (offs_dq[None, :] < DQK),
    )
    tl.store(
        DV_ + (kv_base + cols[:, None]) * DV + offs_dv[None, :],
        dv.to(DV_.dtype.element_ty),
        mask=col_ok[:, None] & (offs_dv[None, :] < DV),
    )


@triton.jit
def _dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    T, S, HQ, HKV, GROUPS, scale,
    DQK: tl.constexpr, DV: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    hk = h // GROUPS
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_dq = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = rows < T
    q = tl.load(
        Q + (bh * T + rows[:, None]) * DQK + offs_dq[None, :],
        mask=row_ok[:, None] & (offs_dq[None, :] < DQK),
        other=0.0,
    )
    do = tl.load(
        DO + (bh * T + rows[:, None]) * DV + offs_dv[None, :],
        mask=row_ok[:, None] & (offs_dv[None, :] < DV),
        other=0.0,
    )
    lse = tl.load(LSE + bh * T + rows, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + bh * T + rows, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_DQK], tl.float32)
    kv_base = (b * HKV + hk) * S
    hi = S
    if CAUSAL:
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M + (S - T))
    for start in range(0, hi, BLOCK_N):
        cols = start + offs_n
        col_ok = cols < S
        k = tl.load(
            K + (kv_base + cols[:, None]) * DQK + offs_dq[None, :],
            mask=col_ok[:, None] & (offs_dq[None, :] < DQK),
            other=0.0,
        )
        v = tl.load(
            V + (kv_base + cols[:, None]) * DV + offs_dv[None, :],
            mask=col_ok[:, None] & (offs_dv[None, :] < DV),
            other=0.0,
        )
        s = tl.dot(q, tl.trans(k)) * scale
        keep = row_ok[:, None] & col_ok[None, :]
        if CAUSAL:
            keep = keep & (cols[None, :] <= (rows + (S - T))[:, None])
        p = tl.where(keep, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    tl.store(
        DQ + (bh * T + rows[:, None]) * DQK + offs_dq[None, :],
        (dq * scale).to(DQ.dtype.element_ty),
        mask=row_ok[:, None] & (offs_dq[None, :] < DQK),
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


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        b, hq, t, dqk = q.shape
        hkv, s, dv = k.shape[1], k.shape[2], v.shape[3]
        o = _alloc((b, hq, t, dv), q.dtype, q.device)
        lse = _alloc((b, hq, t), torch.float32, q.device)
        bm, bn = _blocks(q)
        grid = (triton.cdiv(t, bm), b * hq)
        _fwd_kernel[grid](
            q, k, v, o, lse,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
            t, s, hq, hq // hkv, scale,
            DQK=dqk, DV=dv, CAUSAL=causal, BLOCK_M=bm, BLOCK_N=bn,
            BLOCK_DQK=_pow2(dqk), BLOCK_DV=_pow2(dv),
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
        bm, bn = _blocks(q)
        delta = _alloc((b, hq, t), torch.float32, q.device)
        _delta_kernel[(triton.cdiv(t, bm), b * hq)](
            o, do, delta, t, DV=dv, BLOCK_M=bm, BLOCK_DV=_pow2(dv)
        )
        dq = _alloc(q.shape, q.dtype, q.device)
        dk = _alloc(k.shape, k.dtype, k.device)
        dv_ = _alloc(v.shape, v.dtype, v.device)
        meta = dict(
            DQK=dqk,
            DV=dv,
            CAUSAL=ctx.causal,
            BLOCK_M=bm,
            BLOCK_N=bn,
            BLOCK_DQK=_pow2(dqk),
            BLOCK_DV=_pow2(dv),
        )
        args = (t, s, hq, hkv, hq // hkv, ctx.scale)
        _dkdv_kernel[(triton.cdiv(s, bn), b * hkv)](q, k, v, do, lse, delta, dk, dv_, *args, **meta)
        _dq_kernel[(triton.cdiv(t, bm), b * hq)](q, k, v, do, lse, delta, dq, *args, **meta)
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
def _mla_decode_kernel(
    QL, QR, C, KR, O,
    T, S, H, scale,
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
    for start in range(0, S, BLOCK_N):
        cols = start + offs_n
        col_ok = cols < S
        c = tl.load(
            C + (b * S + cols[:, None]) * R + offs_r[None, :],
            mask=col_ok[:, None] & (offs_r[None, :] < R),
            other=0.0,
        )
        kr = tl.load(
            KR + (b * S + cols[:, None]) * DR + offs_dr[None, :],
            mask=col_ok[:, None] & (offs_dr[None, :] < DR),
            other=0.0,
        )
        s = (tl.dot(ql, tl.trans(c)) + tl.dot(qr, tl.trans(kr))) * scale
        keep = row_ok[:, None] & col_ok[None, :] & (cols[None, :] <= q_pos[:, None])
        s = tl.where(keep, s, float("-inf"))
        m_i, l_i, acc = _online_softmax_step(s, m_i, l_i, acc, c)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    tl.store(
        O + (b * H * T + rows[:, None]) * R + offs_r[None, :],
        (acc / l_safe[:, None]).to(O.dtype.element_ty),
        mask=row_ok[:, None] & (offs_r[None, :] < R),
    )


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
    dtype = torch.promote_types(q_latent.dtype, c_kv.dtype)
    ql, qr = q_latent.to(dtype).contiguous(), q_rope.to(dtype).contiguous()
    c, kr = c_kv.to(dtype).contiguous(), k_rope.to(dtype).contiguous()
    out = _alloc((b, h, t, r), dtype, q_latent.device)
    block_h = 16 if not q_latent.is_cuda else min(64, max(16, triton.next_power_of_2(h * t)))
    block_n = 16 if not q_latent.is_cuda else (32 if r > 256 else 64)
    grid = (triton.cdiv(h * t, block_h), b)
    _mla_decode_kernel[grid](
        ql, qr, c, kr, out, t, s, h, scale,
        R=r, DR=dr, BLOCK_H=block_h, BLOCK_N=block_n, BLOCK_R=_pow2(r), BLOCK_DR=_pow2(dr),
    )  # fmt: skip
    return out
