"""Compile-time resource report of the Triton kernels for NVIDIA GPUs, without a GPU.

    labkit kernels report [--arch sm_80 --arch sm_86 --arch sm_89 --arch sm_90] [--json FILE]

Every kernel (forward, delta, dK/dV, dQ, MLA decode) is compiled with `triton.compile` for each
architecture at every launch configuration the dispatch in `labkit.kernels.attention` can choose
there (`TILES`, `MLA_DECODE_TILES`; no autotuning), and its resources are read from the result:
shared memory is Triton's dynamic allocation (`metadata.shared`) plus any static shared memory in
the cubin; registers and static shared memory come from the cubin (`cuobjdump
--dump-resource-usage`); spills from ptxas's own report (`ptxas -v`, which Triton runs; read
through `knobs.nvidia.dump_ptxas_log`, else the cubin's stack frame is taken as the spill bound).
A compiled kernel's `n_regs`/`n_spills` attributes are not used: Triton fills them only when it
loads the binary on a GPU (`CompiledKernel._init_handles`). A row
fits when shared memory is within the architecture's limit, registers are within 255 per thread
and registers x threads within the 64K registers of an SM; forward kernels must not spill.

Triton caches compiled kernels; the report compiles into a fresh cache directory each run, so
what it reports is what this Triton version produces now.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

# Limits per compute capability, from the CUDA C++ Programming Guide, "Compute Capabilities",
# table "Technical Specifications per Compute Capability" (CUDA 12/13): maximum shared memory per
# thread block (opt-in dynamic; Triton's launcher opts in) 163 KB for 8.0, 99 KB for 8.6 and 8.9,
# 227 KB for 9.0; maximum 32-bit registers per thread 255; registers per SM and per block 64K.
KIB = 1024
SHARED_LIMIT = {80: 163 * KIB, 86: 99 * KIB, 89: 99 * KIB, 90: 227 * KIB}
REGISTERS_PER_THREAD = 255
REGISTERS_PER_SM = 64 * KIB
GPUS = {
    80: "A100, A30",
    86: "RTX 30xx, A10, A40, A6000",
    89: "RTX 40xx, L4, L40S",
    90: "H100, H200",
}
ARCHS = tuple(SHARED_LIMIT)

# Head widths compiled for the training kernels: one per row of TILES at its widest case (the
# 16 row is covered by the 32 row: smaller tiles of the same configuration).
WIDTH_CASES = {32: (32, 32), 64: (64, 64), 128: (128, 128), 192: (192, 128), 256: (256, 256)}
QUICK_WIDTHS = (64, 128, 192, 256)  # the head dims: 64, 128, MLA 192/128, 256
LATENT_WIDTHS = (32, 64, 128, 256, 512)  # the presets' kv_lora_rank (32 ... 512) rounded up
ROPE_WIDTH = 32  # MLA decode's RoPE key: the presets use 8-32, padded to 16 or 32
# fp16 shares bf16's tiles and element size. Only causal attention is compiled: it is what
# LabModel runs, and `causal=False` compiles the same code without the diagonal comparisons.
DTYPES = {"bf16": 2, "fp32": 4}


@dataclass(frozen=True)
class Job:
    """One kernel to compile: its name, target, constexprs, pointer types and launch options."""

    kernel: str
    arch: int
    config: str
    constexprs: dict
    dtype: str
    num_warps: int
    num_stages: int
    source: str = ""  # a kernel file to compile instead of labkit.kernels.attention (baselines)


@dataclass
class Row:
    kernel: str
    arch: str
    config: str
    shared_bytes: int
    shared_limit_bytes: int
    registers: int
    register_limit: int
    threads: int
    spills: int
    stack_bytes: int
    fits: bool
    problems: str


def parse_arch(text: str) -> int:
    """'sm_86', 'sm86' or '86' -> 86; only the four architectures the report knows."""
    match = re.fullmatch(r"(?:sm_?)?(\d+)", text.strip().lower())
    if not match or int(match.group(1)) not in SHARED_LIMIT:
        raise ValueError(
            f"--arch {text!r}: allowed values are " + ", ".join(f"sm_{a}" for a in SHARED_LIMIT)
        )
    return int(match.group(1))


def _job(kernel: str, arch: int, config: str, constexprs: dict, dtype: str, tile) -> Job:
    return Job(kernel, arch, config, constexprs, dtype, tile.num_warps, tile.num_stages)


def jobs(archs: Iterable[int], quick: bool = False) -> list[Job]:
    """Every (kernel, architecture, launch configuration) the dispatch can choose. quick: bf16 at
    the issue's head widths and MLA decode of one token per head (CI)."""
    from labkit.kernels import attention as kern

    dtypes = {"bf16": 2} if quick else DTYPES
    out = []
    for arch in archs:
        table = kern.TILES[kern.ARCH_CLASS[arch]]
        for bucket, (dqk, dv) in WIDTH_CASES.items():
            if quick and bucket not in QUICK_WIDTHS:
                continue
            for dtype, elem in dtypes.items():
                tiles = table[(bucket, elem)]
                widths = kern._widths(dqk, dv)
                for name in ("fwd", "dkdv", "dq"):
                    tile = tiles[name]
                    constexprs = dict(CAUSAL=True, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n)
                    config = f"{dtype} d{dqk}/{dv} {tile}"
                    out.append(
                        _job(f"_{name}_kernel", arch, config, {**constexprs, **widths}, dtype, tile)
                    )
                tile = tiles["delta"]
                constexprs = dict(DV=dv, BLOCK_M=tile.block_m, BLOCK_DV=widths["BLOCK_DV"])
                config = f"{dtype} dv{dv} M{tile.block_m} w{tile.num_warps} s{tile.num_stages}"
                out.append(_job("_delta_kernel", arch, config, constexprs, dtype, tile))
        for rank in LATENT_WIDTHS:
            for dtype, elem in dtypes.items():
                # rows per program = heads x new tokens, rounded to 16/32/64 and capped per rank
                seen = set()
                for rows in (16,) if quick else (16, 32, 64):
                    tile = kern.mla_decode_tile(arch, rank, rows, elem)
                    if tile in seen:
                        continue
                    seen.add(tile)
                    constexprs = dict(
                        R=rank,
                        DR=ROPE_WIDTH,
                        BLOCK_H=tile.block_m,
                        BLOCK_N=tile.block_n,
                        BLOCK_R=kern._pow2(rank),
                        BLOCK_DR=ROPE_WIDTH,
                    )
                    config = f"{dtype} r{rank}+{ROPE_WIDTH} {tile}".replace(" M", " H", 1)
                    out.append(_job("_mla_decode_kernel", arch, config, constexprs, dtype, tile))
    return out


# Argument kinds of each kernel (the rest are constexprs): data pointers take the job's dtype.
_FLOAT_PTR = {"LSE", "DELTA"}
_SCALARS = {"scale", "qk_scale"}


def signature(fn, constexprs: dict, dtype: str) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in _SCALARS:
            sig[name] = "fp32"
        elif name in _FLOAT_PTR:
            sig[name] = "*fp32"
        elif name[0].isupper() and name not in {"T", "S", "H", "HQ", "HKV", "GROUPS"}:
            sig[name] = f"*{dtype}"
        else:
            sig[name] = "i32"
    return sig


def _cuobjdump_usage(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED, LOCAL of the one kernel in a cubin, as cuobjdump reports them."""
    import triton

    tool = triton.knobs.nvidia.cuobjdump.path
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    line = next(x for x in out.splitlines() if "REG:" in x)
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)}


def _kernel_module(source: str):
    """labkit.kernels.attention, or the kernels of another file (e.g. an older revision)."""
    if not source:
        from labkit.kernels import attention

        return attention
    import importlib.util

    name = "labkit_baseline_" + re.sub(r"\W", "_", source)
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, source)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def compile_job(job: Job, fn=None) -> Row:
    """Compile one job for its architecture and read its resources."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if fn is None:
        fn = getattr(_kernel_module(job.source), job.kernel)
    src = ASTSource(fn, signature(fn, job.constexprs, job.dtype), dict(job.constexprs))
    log = io.StringIO()
    triton.knobs.nvidia.dump_ptxas_log = True
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(
            src,
            target=GPUTarget("cuda", job.arch, 32),
            options=dict(num_warps=job.num_warps, num_stages=job.num_stages),
        )
    usage = _cuobjdump_usage(compiled.asm["cubin"])
    spill_stores = [int(x) for x in re.findall(r"(\d+) bytes spill stores", log.getvalue())]
    if not spill_stores:  # no ptxas log captured: the stack frame is where spills would go
        spill_stores = [usage.get("STACK", 0)]
    shared = compiled.metadata.shared + usage.get("SHARED", 0)
    threads = 32 * job.num_warps
    regs = usage["REG"]
    problems = []
    if shared > SHARED_LIMIT[job.arch]:
        problems.append(f"shared memory {shared} B > {SHARED_LIMIT[job.arch]} B")
    if regs > REGISTERS_PER_THREAD:
        problems.append(f"{regs} registers per thread > {REGISTERS_PER_THREAD}")
    if regs * threads > REGISTERS_PER_SM:
        problems.append(f"{regs} registers x {threads} threads > {REGISTERS_PER_SM}")
    if job.kernel == "_fwd_kernel" and max(spill_stores) > 0:
        problems.append(f"forward kernel spills {max(spill_stores)} B")
    return Row(
        kernel=job.kernel.strip("_").removesuffix("_kernel"),
        arch=f"sm_{job.arch}",
        config=job.config,
        shared_bytes=shared,
        shared_limit_bytes=SHARED_LIMIT[job.arch],
        registers=regs,
        register_limit=REGISTERS_PER_THREAD,
        threads=threads,
        spills=max(spill_stores),
        stack_bytes=usage.get("STACK", 0),
        fits=not problems,
        problems="; ".join(problems),
    )


def _compile_in_worker(job: Job) -> Row:
    try:
        return compile_job(job)
    except Exception as err:  # a config that does not compile is reported, not a traceback
        message = str(err).strip().splitlines()
        return Row(
            kernel=job.kernel.strip("_").removesuffix("_kernel"),
            arch=f"sm_{job.arch}",
            config=job.config,
            shared_bytes=0,
            shared_limit_bytes=SHARED_LIMIT[job.arch],
            registers=0,
            register_limit=REGISTERS_PER_THREAD,
            threads=32 * job.num_warps,
            spills=0,
            stack_bytes=0,
            fits=False,
            problems=f"does not compile: {type(err).__name__}: {message[0] if message else ''}",
        )


def run(
    archs: Sequence[int] = ARCHS,
    quick: bool = False,
    workers: int | None = None,
    progress: bool = True,
    todo: Sequence[Job] | None = None,
) -> list[Row]:
    """Compile every job for `archs` in parallel processes (one fresh Triton cache per run)."""
    from tqdm.auto import tqdm

    todo = list(todo) if todo is not None else jobs(archs, quick)
    workers = workers or min(len(todo), os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="labkit-kernels-") as cache:
        env = {"TRITON_CACHE_DIR": cache, "TRITON_DEFAULT_FP_FUSION": "1"}
        saved = {k: os.environ.get(k) for k in (*env, "TRITON_INTERPRET")}
        os.environ.update(env)
        os.environ.pop("TRITON_INTERPRET", None)  # workers compile; they must not interpret
        try:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                rows = list(
                    tqdm(
                        pool.map(_compile_in_worker, todo),
                        total=len(todo),
                        desc="compiling",
                        disable=not progress,
                    )
                )
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return rows


def table(rows: Sequence[Row]) -> str:
    """Markdown: one line per row, shared memory in KiB against the limit."""
    lines = [
        "| kernel | arch | config | shared KiB / limit | registers | spills (B) | fits |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.kernel} | {r.arch} | {r.config} | {r.shared_bytes / KIB:.1f} / "
            f"{r.shared_limit_bytes / KIB:.0f} | {r.registers} | {r.spills} | "
            f"{'yes' if r.fits else 'NO: ' + r.problems} |"
        )
    return "\n".join(lines)


def summary(rows: Sequence[Row]) -> str:
    """Per kernel and architecture: configurations, how many fit, the largest shared memory and
    register counts, and spills."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.kernel, r.arch), []).append(r)
    lines = [
        "| kernel | arch | configs | fit | max shared KiB / limit | max registers "
        "| configs spilling (max B) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (kernel, arch), rs in groups.items():
        spilling = [r.spills for r in rs if r.spills]
        lines.append(
            f"| {kernel} | {arch} | {len(rs)} | {sum(r.fits for r in rs)} | "
            f"{max(r.shared_bytes for r in rs) / KIB:.1f} / {rs[0].shared_limit_bytes / KIB:.0f} | "
            f"{max(r.registers for r in rs)} | "
            f"{len(spilling)} ({max(spilling) if spilling else 0}) |"
        )
    return "\n".join(lines)


def markdown(rows: Sequence[Row], command: str) -> str:
    """The RESULTS.md section: per kernel and architecture, then every row (folded)."""
    import triton

    bad = [r for r in rows if not r.fits]
    verdict = (
        f"all {len(rows)} fit"
        if not bad
        else f"{len(bad)} of {len(rows)} do NOT fit: "
        + "; ".join(f"{r.kernel} {r.arch} {r.config} ({r.problems})" for r in bad)
    )
    return (
        f"`{command}` — Triton {triton.__version__}, compiled on the CPU for each target; "
        f"{len(rows)} kernel configurations: {verdict}. Shared memory = Triton's allocation + "
        "static shared memory of the cubin; registers from the cubin (cuobjdump); spills = "
        "ptxas's spill stores (bytes per thread).\n\n"
        + summary(rows)
        + "\n\n<details><summary>every configuration</summary>\n\n"
        + table(rows)
        + "\n\n</details>"
    )
