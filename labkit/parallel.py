"""Processes and parallelism for the trainer: who this rank is, which strategy wraps the model
(decided once, here), and the one path between a (sharded) model and full state dicts.

    single   one process; the model is called as is
    ddp      DistributedDataParallel: gradients all-reduced on the last micro-batch
    fsdp     FSDP2 (`fully_shard` per block, then the model): parameters sharded across ranks

The trainer asks a `Parallel` for the module to call (compiled or not), the gradient-sync context
of a micro-batch and the state dicts; it never branches on the strategy itself.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import os
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

STRATEGIES = ("single", "ddp", "fsdp")
FSDP_ABOVE_PARAMS = 300e6  # `parallel.strategy = "auto"` shards models larger than this


class Dist:
    """Rank, world and device; a single process when not launched by torchrun."""

    def __init__(self, backend: str = "auto", timeout_s: float = 600.0):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1:
            backend = backend if backend != "auto" else ("nccl" if cuda else "gloo")
            # a stopped or lost rank fails the group after `parallel.timeout_s`, not 30 minutes
            dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s))
        self.main = self.rank == 0

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) in place across ranks."""
        if self.world > 1:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def compile_wanted(setting: bool | str, device: torch.device, precision: str) -> bool:
    """`train.compile`: true, false, or "auto" -- on CUDA, and on the CPU under bf16 autocast,
    where the compiled step measured faster (benchmarks/RESULTS.md); fp32 on the CPU gains less
    than a short run's compile time."""
    if setting == "auto":
        return device.type == "cuda" or precision == "bf16"
    return bool(setting)


def keep_compile_cache() -> Path:
    """Where torch.compile keeps its compiled graphs between runs: $TORCHINDUCTOR_CACHE_DIR, by
    default ~/.cache/labkit/torch-compile (a second run of the same shapes then starts in
    seconds instead of recompiling)."""
    default = Path.home() / ".cache" / "labkit" / "torch-compile"
    return Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default)))


def keep_freed_memory_on_cpu() -> bool:
    """Let glibc's malloc keep freed blocks (up to 32 MiB each, up to 2 GiB in all) for reuse
    instead of handing each back to the kernel, which a training step then page-faults in again
    at every step. A compiled CPU step allocates its buffers anew per call and loses ~15 % of
    its speed to that (benchmarks/RESULTS.md, labkit.bench.train). Skipped where malloc is not
    glibc's or the user already tuned it (GLIBC_TUNABLES, LD_PRELOAD of another allocator).
    Returns whether the setting was applied."""
    if not sys.platform.startswith("linux") or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if "malloc" in os.environ.get("LD_PRELOAD", ""):  # jemalloc, tcmalloc, mimalloc
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def hooks_attached(model: torch.nn.Module) -> bool:
    """Whether any module of `model` has a forward or backward hook (TransformerLens hooks
    included): a compiled graph would not see hooks attached after it was traced."""
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in model.modules()
    )


def choose_strategy(requested: str, num_params: int, world: int, optimizer: str) -> str:
    """The strategy for `parallel.strategy` (auto/ddp/fsdp) on `world` processes."""
    if world == 1:
        return "single"
    strategy = requested
    if strategy == "auto":
        strategy = "fsdp" if num_params > FSDP_ABOVE_PARAMS else "ddp"
    if optimizer == "muon" and strategy == "fsdp":
        raise ValueError(
            "train.optimizer = 'muon' needs whole matrices: use parallel.strategy = 'ddp'"
        )
    return strategy


class Parallel:
    """One strategy for one model: wraps it, syncs gradients, moves full state dicts."""

    def __init__(self, model: torch.nn.Module, strategy: str, d: Dist, compile: bool = False):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
        self.model, self.strategy, self.dist = model, strategy, d
        self.module: torch.nn.Module = model  # the wrapped model (DDP, FSDP2 or itself)
        self.compiled: torch.nn.Module | None = None
        self._said_eager = False
        if strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [d.device.index] if d.device.type == "cuda" else None
            self.module = DDP(model, device_ids=ids)
        elif strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in model.blocks:
                fully_shard(block)
            fully_shard(model)
        if compile:
            keep_compile_cache()
            # one graph per sequence length (a stage of the curriculum recompiles once), never a
            # dynamic-shape graph that is slower at every length
            self.compiled = torch.compile(self.module, dynamic=False)

    @property
    def step_module(self) -> torch.nn.Module:
        """What a training step calls: the compiled module, unless hooks are attached to the
        model (then the eager one, said once)."""
        if self.compiled is None:
            return self.module
        if hooks_attached(self.model):
            if not self._said_eager and self.dist.main:
                print("hooks are attached to the model: the training step runs eager")
            self._said_eager = True
            return self.module
        return self.compiled

    def micro_batch(self, last: bool) -> AbstractContextManager:
        """Gradient sync only on the last micro-batch of an accumulation."""
        if self.strategy == "ddp" and not last:
            return self.module.no_sync()  # the DDP module the compiled one wraps
        if self.strategy == "fsdp":
            self.model.set_requires_gradient_sync(last)
        return nullcontext()

    def state_dicts(
        self, optimizers: list[torch.optim.Optimizer] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict | None]:
        """Full (unsharded, CPU) model tensors and, if `optimizers` are given, their state; every
        rank must call it (FSDP gathers)."""
        if self.strategy == "fsdp":
            from torch.distributed.checkpoint import state_dict as sd

            options = sd.StateDictOptions(full_state_dict=True, cpu_offload=True)
            tensors = sd.get_model_state_dict(self.model, options=options)
            if optimizers is None:
                return tensors, None
            return tensors, {
                "fsdp": sd.get_optimizer_state_dict(self.model, optimizers, options=options)
            }
        tensors = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        if optimizers is None:
            return tensors, None
        return tensors, {"optimizers": [o.state_dict() for o in optimizers]}

    def load_state_dicts(
        self, tensors: dict[str, torch.Tensor], optimizers: list, optim_state: dict
    ) -> None:
        """The inverse of `state_dicts`, on every rank."""
        if self.strategy == "fsdp":
            from torch.distributed.checkpoint import state_dict as sd

            options = sd.StateDictOptions(full_state_dict=True)
            if self.model.cfg.tie_embeddings:
                tensors = dict(tensors, **{"unembed.weight": tensors["embed.weight"]})
            sd.set_model_state_dict(self.model, tensors, options=options)
            sd.set_optimizer_state_dict(
                self.model, optimizers, optim_state["fsdp"], options=options
            )
            return
        missing, unexpected = self.model.load_state_dict(tensors, strict=False)
        if [m for m in missing if m != "unembed.weight"] or unexpected:
            from labkit.errors import CheckpointError

            raise CheckpointError(
                f"resume state does not fit the model: missing {missing}, extra {unexpected}"
            )
        for opt, state in zip(optimizers, optim_state["optimizers"], strict=True):
            opt.load_state_dict(state)


__all__ = [
    "STRATEGIES",
    "Dist",
    "Parallel",
    "choose_strategy",
    "compile_wanted",
    "hooks_attached",
    "keep_compile_cache",
    "keep_freed_memory_on_cpu",
]
