"""Triton kernels against a float64 reference: on the CPU through TRITON_INTERPRET=1 (fp32); the
`gpu` marker runs the same cases in bf16 and fp16 on CUDA."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import odd_config

from labkit.kernels import attention as kern
from labkit.kernels import flash_attention, mla_decode
from labkit.kernels.check import CASES, GPU_CASES, SPLIT_CASES, case_id, reference, run_case
from labkit.model import KVCache, LabModel

CUDA = torch.cuda.is_available()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def poisoned(monkeypatch):
    """Outputs start as NaN, so any element a kernel fails to write shows up."""
    monkeypatch.setattr(
        kern,
        "_alloc",
        lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device),
    )


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=lambda c: "B{}Hq{}Hkv{}T{}S{}D{}-{}{}".format(*c[:7], "" if c[7] else "-noncausal"),
)
def test_flash_attention_forward_and_backward(case, poisoned):
    run_case(case)


def set_tiles(monkeypatch, block_m, block_n):
    tile = kern.Tile(block_m, block_n)
    monkeypatch.setattr(
        kern, "INTERPRETER_TILES", {k: tile for k in ("fwd", "delta", "dkdv", "dq")}
    )


@pytest.mark.parametrize("tiles", [(32, 16), (16, 32)], ids=lambda t: "M{}N{}".format(*t))
@pytest.mark.parametrize(
    "case", SPLIT_CASES, ids=lambda c: "T{}S{}D{}-{}{}".format(*c[3:7], "c" if c[7] else "full")
)
def test_block_skipping_with_unequal_tiles(case, tiles, poisoned, monkeypatch):
    """Query blocks larger and smaller than key blocks: the blocks that are fully visible run
    unmasked, the diagonal ones masked, the ones above the diagonal are skipped."""
    set_tiles(monkeypatch, *tiles)
    run_case(case)


def test_split_width_and_width_buckets():
    assert [kern.split_width(d) for d in (8, 24, 40, 48, 64, 96, 160, 192, 224, 256)] == [
        (16, 0), (32, 0), (32, 16), (32, 16), (64, 0), (64, 32), (128, 32), (128, 64), (256, 0), (256, 0)
    ]  # fmt: skip
    assert kern.width_bucket(192, 128) == 192  # MLA: 128 + 64, not padded to 256
    assert kern.width_bucket(192, 192) == 256
    assert kern.width_bucket(48, 48) == 64


def test_every_architecture_has_a_tile_for_every_width():
    """The dispatch has a launch configuration for every capability, width and element size
    (unknown capabilities take the 99 KiB table), and MLA decode one for every latent width."""
    for cc in (75, 80, 86, 87, 89, 90, 100, 120):
        for dqk, dv in [(16, 16), (24, 40), (48, 48), (64, 64), (128, 128), (192, 128), (256, 256)]:
            for elem in (2, 4):
                tiles = kern.attention_tiles(cc, dqk, dv, elem)
                assert set(tiles) == {"fwd", "delta", "dkdv", "dq"}
        for rank in (16, 24, 96, 512):
            for rows in (1, 20, 200):
                tile = kern.mla_decode_tile(cc, rank, rows, 2)
                assert tile.block_m in (16, 32, 64) and tile.block_n >= 16
    assert kern.attention_tiles(89, 256, 256, 2) == kern.attention_tiles(86, 256, 256, 2)
    assert kern.attention_tiles(80, 256, 256, 2) != kern.attention_tiles(86, 256, 256, 2)


@pytest.mark.parametrize("tiles", [(16, 16), (32, 16)], ids=lambda t: "H{}N{}".format(*t))
@pytest.mark.parametrize("t", [1, 3])
def test_mla_decode_matches_reference(t, tiles, poisoned, monkeypatch):
    """The cache before the new tokens runs unmasked, the last block masked (S = 37, N = 16)."""
    set_tiles(monkeypatch, *tiles)
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


def test_cached_decoding_with_triton_matches_full_forward():
    cfg = odd_config("mla", n_layers=2, max_seq_len=40)
    model = LabModel(cfg).eval()
    toks = torch.randint(0, cfg.vocab_size, (2, 14))
    with torch.no_grad():
        full = model(toks)
        model.set_attn_impl("triton")  # MLA decode runs mla_decode on the latent
        cache = KVCache(cfg, 2, 14)
        parts = [model(toks[:, :9], cache=cache)] + [
            model(toks[:, i : i + 1], cache=cache) for i in range(9, 14)
        ]
    assert ((torch.cat(parts, 1) - full).abs().max() / full.abs().max()).item() <= 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES + SPLIT_CASES + GPU_CASES, ids=case_id)
def test_flash_attention_gpu(case, dtype, poisoned):
    run_case(case, device="cuda", dtype=dtype, tol=(3e-2, 3e-2))


def test_dispatch_decision(monkeypatch):
    from labkit.model import attention_impl

    cfg = odd_config("mla")
    monkeypatch.setenv("LABKIT_ATTN", "eager")  # no environment variable overrides the config
    assert attention_impl(cfg, torch.device("cuda")) == "triton"  # auto: the kernels on CUDA
    assert attention_impl(cfg, torch.device("cpu")) == "sdpa"
    assert attention_impl(cfg.replace(attn_impl="sdpa"), torch.device("cuda")) == "sdpa"
    assert attention_impl(cfg.replace(attn_impl="triton"), torch.device("cpu")) == "triton"
    model = LabModel(cfg)
    model.set_attn_impl("eager")  # one config, read by every block
    assert all(b.attn.cfg is model.cfg for b in model.blocks)
    assert all(b.attn.needs_eager() for b in model.blocks)
    with pytest.raises(ValueError, match="attn_impl must be one of"):
        model.set_attn_impl("flash")


# --------------------------------------------------------------------------- compile-time report
def compile_env():
    """The report compiles for NVIDIA targets; it must not run under the interpreter."""
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def run_report(args, tmp_path, timeout=1500):
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "labkit.cli", "kernels", "report", "--quiet", "--json", str(out)]
    proc = subprocess.run(
        cmd + args, capture_output=True, text=True, env=compile_env(), timeout=timeout, cwd=ROOT
    )
    rows = json.loads(out.read_text()) if out.exists() else []
    return proc, rows


def check_rows(proc, rows, dtypes):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    keys = {"kernel", "arch", "config", "shared_bytes", "shared_limit_bytes", "registers", "spills"}
    assert rows and all(keys <= set(r) for r in rows)
    archs = {"sm_80", "sm_86", "sm_89", "sm_90"}
    kernels = {"fwd", "delta", "dkdv", "dq", "mla_decode"}
    assert {(r["kernel"], r["arch"]) for r in rows} == {(k, a) for k in kernels for a in archs}
    for arch in archs:
        fwd = [r["config"] for r in rows if r["kernel"] == "fwd" and r["arch"] == arch]
        for dtype in dtypes:
            for dims in ("d64/64", "d128/128", "d192/128", "d256/256"):
                assert any(c.startswith(f"{dtype} {dims} ") for c in fwd), (arch, dtype, dims)
        ranks = {c.split()[1] for r in rows if r["arch"] == arch and r["kernel"] == "mla_decode" for c in [r["config"]]}  # fmt: skip
        assert ranks == {f"r{w}+32" for w in (32, 64, 128, 256, 512)}
    for r in rows:
        where = f"{r['kernel']} {r['arch']} {r['config']}"
        assert 0 < r["shared_bytes"] <= r["shared_limit_bytes"], where
        assert 0 < r["registers"] <= 255 and r["registers"] * r["threads"] <= 65536, where
        if r["kernel"] == "fwd":
            assert r["spills"] == 0, where
        assert r["fits"], where
    limits = {r["arch"]: r["shared_limit_bytes"] for r in rows}
    assert limits == {
        "sm_80": 163 * 1024,
        "sm_86": 99 * 1024,
        "sm_89": 99 * 1024,
        "sm_90": 227 * 1024,
    }


def test_kernels_report_every_dispatch_config_fits(tmp_path):
    """CI: every kernel compiled for sm_80/86/89/90 at the tiles the dispatch chooses for bf16
    at head dims 64, 128, 192/128, 256 and one-token MLA decode at the presets' latent widths
    fits the architecture's shared memory and registers, and the forward kernel does not spill."""
    proc, rows = run_report(["--quick"], tmp_path)
    check_rows(proc, rows, ["bf16"])


@pytest.mark.slow
def test_kernels_report_all_configs_fit(tmp_path):
    """Everything the dispatch can choose: bf16/fp16 and fp32 tiles, head dims 32-256, MLA decode
    with 16-64 rows per program."""
    proc, rows = run_report([], tmp_path, timeout=3600)
    check_rows(proc, rows, ["bf16", "fp32"])


def test_kernels_report_flags_a_config_over_the_limit():
    """The check can fail: a 64 x 64 dK/dV tile at head dim 256 with 3 stages needs more than
    the 99 KiB an sm_86 block may use."""
    code = (
        "from labkit.kernels.report import Job, compile_job; from labkit.kernels import attention as k;"
        "w = k._widths(256, 256);"
        "job = Job('_dkdv_kernel', 86, 'x', dict(CAUSAL=True, BLOCK_M=64, BLOCK_N=64, **w), 'bf16', 4, 3);"
        "r = compile_job(job); print(r.fits, r.shared_bytes, r.problems)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=compile_env(), cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    fits, shared, problems = proc.stdout.split(" ", 2)
    assert fits == "False" and int(shared) > 99 * 1024 and "shared memory" in problems


def test_kernels_report_rejects_unknown_architectures(capsys):
    from labkit.cli import main

    assert main(["kernels", "report", "--arch", "sm_75"]) == 2
    assert "sm_80, sm_86, sm_89, sm_90" in capsys.readouterr().err


# --------------------------------------------------------------------------- make gpu-check
def test_gpu_check_dry_run_prints_the_plan():
    proc = subprocess.run(
        [sys.executable, "-m", "labkit.bench.gpu_check", "--dry-run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for expected in (
        "-m labkit.kernels.check",
        "-m pytest -q -m gpu",
        "-m labkit.bench.attention --record --quick",
        "--layer-slice",
        "never replaced",
        "torch==",
        "benchmarks/RESULTS.md",
    ):
        assert expected in out, expected


@pytest.mark.skipif(
    CUDA or sys.prefix == sys.base_prefix,
    reason="the refusal without a GPU, inside a venv (outside one it would make .venv-gpu)",
)
def test_gpu_check_stops_clearly_without_a_gpu():
    proc = subprocess.run(
        [sys.executable, "-m", "labkit.bench.gpu_check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_gpu_check_never_installs_torch_or_cuda_wheels(tmp_path):
    from labkit.bench import gpu_check

    pins = gpu_check.constraints()
    assert any(p.startswith("torch==") for p in pins)
    assert all(gpu_check.NEVER_INSTALL.match(p.split("==")[0]) for p in pins)
    assert gpu_check.missing(["torch>=2.0", "surely-not-installed-labkit-dep>=1"]) == [
        "surely-not-installed-labkit-dep>=1"
    ]
    cmd = gpu_check.install_command(["tqdm>=4"], str(tmp_path), "c.txt")
    assert cmd[-1] == "tqdm>=4" and "--no-index" in cmd and cmd[4:6] == ["-c", "c.txt"]
    assert not any(
        gpu_check.NEVER_INSTALL.match(gpu_check._dist_name(r))
        for r in gpu_check.missing(gpu_check.requirements())
    )
