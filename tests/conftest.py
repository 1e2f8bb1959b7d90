import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if not torch.cuda.is_available():
    # Triton kernels are tested on the CPU through the interpreter; it must be set before any
    # @triton.jit function is defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from labkit.config import DataConfig, ModelConfig  # noqa: E402
from labkit.data.build import build  # noqa: E402


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


# --------------------------------------------------------------------------- a trained CI run
ROOT = Path(__file__).resolve().parents[1]
RUN = str(ROOT / "pretrain" / "run.py")
CI = str(ROOT / "pretrain" / "configs" / "ci.toml")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture(scope="session")
def ci_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("trainer-data") / "ci"
    build(DataConfig.load(ROOT / "pretrain" / "configs" / "data" / "ci.toml"), out, quiet=True)
    return out


def run(args, data, *, torchrun=True, extra=(), timeout=300, check=True):
    cmd = (TORCHRUN if torchrun else [sys.executable]) + list(extra) + [RUN, "--config", CI]
    cmd += ["--set", f"data.dir={data}", "--set", "log.tensorboard=false", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def reference(ci_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "reference"
    run(["--run-dir", str(run_dir)], ci_data)
    return run_dir


@pytest.fixture(scope="session")
def reference_gqa(ci_data, tmp_path_factory):
    """The CI run's GQA twin (tiny-gqa, two layers), for what must hold on MLA and GQA alike."""
    run_dir = tmp_path_factory.mktemp("runs") / "reference-gqa"
    run(["--run-dir", str(run_dir), "--set", "model.preset=tiny-gqa"], ci_data)
    return run_dir
