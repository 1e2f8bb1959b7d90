"""Launching the trainer: the one place a trainer command is spelled, and the signals a running
trainer answers (SIGINT/SIGTERM: finish the step, save a resume state, exit)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from pathlib import Path


def trainer_command(
    config: str | Path,
    run_dir: str | Path,
    sets: Sequence[str] = (),
    *,
    resume: bool = True,
    nproc: int = 1,
    launcher: Sequence[str] = ("torchrun",),
    trainer: str | Path | None = None,
) -> list[str]:
    """The command line that trains (or, with `resume`, continues) `run_dir` under `config` with
    `--set` overrides: `python pretrain/run.py ...`, or `LAUNCHER --nproc_per_node=N
    pretrain/run.py ...` for several processes. The one place a trainer command is spelled
    (sweeps, baselines, benchmarks, `make paper`); the trainer is the shipped one by default."""
    from labkit.resources import trainer_script

    args = [str(trainer or trainer_script()), "--config", str(config), "--run-dir", str(run_dir)]
    args += ["--resume"] if resume else []
    for s in sets:
        args += ["--set", s]
    if nproc > 1:
        return [*launcher, f"--nproc_per_node={nproc}", *args]
    return [sys.executable, *args]


class StopSignals:
    """SIGINT/SIGTERM ask the loop to finish its step, save a resume state and exit 130/143; a
    second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.signum = 0
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum


__all__ = ["StopSignals", "trainer_command"]
