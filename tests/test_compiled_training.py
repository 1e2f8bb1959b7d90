"""Compiled training (`train.compile`): the compiled step computes what the eager one does, says
what it cost, steps aside while hooks are attached, and resumes bit-identically within its mode.
Speed is measured by `python -m labkit.bench.train`, never asserted here."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import CI, ROOT, RUN, TORCHRUN, run

from labkit.config import ModelConfig
from labkit.model import LabModel
from labkit.parallel import Dist, Parallel, compile_wanted, hooks_attached

# 20 steps of one process: short enough that compiling the 2-layer CI model dominates the cost
SHORT = ["--set", "train.tokens=20480", "--set", "checkpoint.resume_every_steps=5",
         "--set", "eval.every_steps=10", "--set", "log.every_steps=1"]  # fmt: skip


def rows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def history(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]


def test_compile_auto_is_on_for_cuda_and_cpu_bf16_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_wanted("auto", cpu, "bf16") and compile_wanted("auto", cuda, "fp32")
    assert not compile_wanted("auto", cpu, "fp32")
    assert compile_wanted(True, cpu, "fp32") and not compile_wanted(False, cuda, "bf16")


def test_compiled_training_matches_eager_and_records_its_compile_time(ci_data, tmp_path):
    """fp32, 20 steps: compiled losses equal eager ones within 1e-4; the compile (one sequence
    length, one stage) is printed and kept in history.jsonl."""
    fp32 = [*SHORT, "--set", "train.precision=fp32"]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    run(["--run-dir", str(eager), *fp32, "--set", "train.compile=false"], ci_data, torchrun=False)
    out = run(["--run-dir", str(compiled), *fp32, "--set", "train.compile=true"], ci_data,
              torchrun=False, timeout=600)  # fmt: skip
    a, b = rows(eager), rows(compiled)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 21))
    for x, y in zip(a, b, strict=True):
        assert abs(x["loss"] - y["loss"]) <= 1e-4, (x["step"], x["loss"], y["loss"])
    assert (
        "compiled step" in out.stdout
        and "compiled the training step for sequence length 64" in (out.stdout + out.stderr)
    )
    compiles = [e for e in history(compiled) if e["event"] == "compile"]
    assert [e["seq_len"] for e in compiles] == [64] and compiles[0]["seconds"] > 0
    assert not [e for e in history(eager) if e["event"] == "compile"]


def test_a_model_with_hooks_steps_eager_and_says_so_once(capsys):
    cfg = ModelConfig(vocab_size=300, d_model=32, n_layers=1, n_heads=2, d_ff=64, kv_lora_rank=8,
                      qk_nope_head_dim=12, qk_rope_head_dim=4, v_head_dim=16)  # fmt: skip
    model = LabModel(cfg)
    par = Parallel(model, "single", Dist(), compile=True)
    assert par.step_module is par.compiled and not hooks_attached(model)
    model.blocks[0].attn.hook_kv_latent.add_hook(lambda x, hook: x)
    assert par.step_module is model and par.step_module is model
    assert capsys.readouterr().out.count("the training step runs eager") == 1
    model.reset_hooks()
    assert par.step_module is par.compiled


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical_when_compiled(ci_data, tmp_path):
    """The resume guarantee within the compiled mode: an uninterrupted compiled run (torchrun,
    2 processes) and one killed mid-training and resumed log the same losses, bit for bit."""
    compiled = ["--set", "train.compile=true"]
    reference = tmp_path / "reference"
    run(["--run-dir", str(reference), *compiled], ci_data, timeout=900)
    run_dir = tmp_path / "killed"
    cmd = TORCHRUN + [RUN, "--config", CI, "--set", f"data.dir={ci_data}", "--set",
                      "log.tensorboard=false", *compiled, "--run-dir", str(run_dir)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)  # fmt: skip
    deadline = time.time() + 600
    while time.time() < deadline:
        done = [r["step"] for r in rows(run_dir)] if (run_dir / "metrics.jsonl").exists() else []
        if max(done, default=0) >= 14:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert max(r["step"] for r in rows(run_dir)) < 24, "the run finished before it was killed"
    run(["--run-dir", str(run_dir), "--resume"], ci_data, timeout=900)
    key = lambda rs: {r["step"]: (r["loss"], r["grad_norm"]) for r in rs}  # noqa: E731
    assert key(rows(run_dir)) == key(rows(reference))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_trains_compiled(ci_data, tmp_path, strategy):
    """DDP and FSDP2 with the compiled step, 2 processes: training finishes and its losses fall."""
    run_dir = tmp_path / strategy
    run(["--run-dir", str(run_dir), "--set", "train.compile=true", "--set",
         f"parallel.strategy={strategy}"], ci_data, timeout=900)  # fmt: skip
    losses = [r["loss"] for r in rows(run_dir)]
    assert len(losses) == 24 and losses[-1] < losses[0]


def test_freed_memory_is_kept_only_where_malloc_is_glibcs_and_untuned(monkeypatch):
    from labkit.parallel import keep_freed_memory_on_cpu

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")
    assert keep_freed_memory_on_cpu() is False
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert keep_freed_memory_on_cpu() is False
    monkeypatch.delenv("LD_PRELOAD")
    assert keep_freed_memory_on_cpu() is True  # this CI runs Linux with glibc
