"""A run directory's lifecycle: opened under a lock by one trainer, its config pinned, its
history and metrics kept crash-consistent.

`RunWriter.open(path, resume=...)` takes the lock and checks the directory is the run asked for;
`resolve_config` gives the config a (re)start must use: the pinned one on `--resume`, with only
keys declared safe (`SAFE_TO_CHANGE`) allowed to differ. The trainer calls these; it decides
nothing about the directory itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from labkit.config import TrainConfig
from labkit.errors import RunDirError
from labkit.fileio import atomic_write_bytes, fsync_dir
from labkit.run.checkpoint import latest_resume_state
from labkit.run.layout import CHECKPOINTS, CONFIG, FINAL, HISTORY, LOCK, METRICS, RESUME

# Keys a resumed run may change: they alter what is logged or how often state is saved, never the
# model, the data, the optimisation or the schedule, so the run's numbers stay one run's numbers.
SAFE_TO_CHANGE = (
    "log.",
    "checkpoint.resume_every_steps",
    "checkpoint.keep_last",
    "train.compile",
    "parallel.backend",
    "parallel.timeout_s",
    "debug.",
)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_changes(pinned: dict[str, Any], requested: dict[str, Any]) -> dict[str, tuple]:
    """Keys whose value differs between two configs (as dicts), with (pinned, requested)."""
    a, b = flatten(pinned), flatten(requested)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def is_safe_change(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_TO_CHANGE)


class RunWriter:
    """The one process allowed to write a run directory: it holds the directory's lock for as
    long as the object lives."""

    def __init__(self, path: Path, lock_fd: int):
        self.path = path
        self._lock_fd = lock_fd

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, resume: bool, lock_wait_s: float = 0.0) -> RunWriter:
        """Create or reopen `path` under an exclusive lock. Without `resume`, the directory must
        be new or empty; with it, it must be empty or hold a run (config.json)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, cls._acquire_lock(path, lock_wait_s))
        content = run.content()
        if content and not resume:
            run.close()
            raise RunDirError(
                f"{path} already holds a run ({', '.join(content[:4])}): continue it with "
                f"`pretrain/run.py --run-dir {path} --resume`, or choose another --run-dir"
            )
        if content and not (path / CONFIG).exists():
            run.close()
            raise RunDirError(
                f"{path} is not empty and holds no run (no {CONFIG}): nothing was touched; "
                "choose another --run-dir"
            )
        return run

    @staticmethod
    def _acquire_lock(path: Path, wait_s: float) -> int:
        """An exclusive flock on `path/.lock`, waiting up to `wait_s` seconds for another
        trainer to finish or die. The lock file names its holder (pid, host, start time)."""
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise RunDirError(
                        f"{path} is in use by {holder}: one trainer per run directory; wait for "
                        "it to finish (or pass --lock-wait SECONDS), or choose another --run-dir"
                    ) from None
                if not announced:
                    print(f"waiting for the lock on {path} (held by {holder})", flush=True)
                    announced = True
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        stamp = dt.datetime.now().isoformat(timespec="seconds")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        return fd

    def content(self) -> list[str]:
        """Names in the directory other than the lock file."""
        return sorted(p.name for p in self.path.iterdir() if p.name != LOCK)

    def close(self) -> None:
        """Release the lock (the kernel also releases it when the process dies)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # ------------------------------------------------------------------ config and history
    def pin(self, cfg: TrainConfig, model: dict[str, Any]) -> None:
        """Write config.json: once when the run is created, again only for safe changes."""
        text = json.dumps({"train": cfg.to_dict(), "model": model}, indent=2) + "\n"
        atomic_write_bytes(self.path / CONFIG, text.encode())

    def record(self, event: str, **fields: Any) -> None:
        """Append one line to history.jsonl (flushed and fsynced)."""
        line = {
            "event": event,
            "time": dt.datetime.now().isoformat(timespec="seconds"),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            **fields,
        }
        with open(self.path / HISTORY, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def discard_if_unused(self) -> None:
        """Remove a directory this start created but never used (only the lock in it), so a
        failed start leaves no stub run behind."""
        if not self.content():
            self.close()
            (self.path / LOCK).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def finished(self) -> dict[str, Any] | None:
        """The final record of a finished run (final.json), or None while it is unfinished. A
        final.json that cannot be read still marks the run finished (its record is then {})."""
        path = self.path / FINAL
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return record.get("final") or {} if isinstance(record, dict) else {}

    def latest_resume_state(self) -> Path | None:
        """The newest resume state that passes its checksums; None when there is none yet. If
        states exist but every one is corrupted, that is an error, never a silent restart."""
        return latest_resume_state(self.path)

    # ------------------------------------------------------------------ repair on (re)start
    def clean_stale_temp_dirs(self) -> list[str]:
        """Remove the temporary directories of checkpoint writers that died (`.NAME.tmp-PID`);
        a `.NAME.old-PID` whose replacement never landed is put back. Safe: we hold the lock, so
        no writer of this run is alive."""
        actions = []
        for root in (self.path / CHECKPOINTS, self.path / RESUME):
            if not root.is_dir():
                continue
            for p in sorted(root.iterdir()):
                if not (p.name.startswith(".") and p.is_dir()):
                    continue
                name, _, kind = p.name[1:].rpartition(".")
                target = root / name
                if kind.startswith("old-") and not target.exists():
                    p.rename(target)
                    actions.append(f"restored {target.name} from {p.name}")
                elif kind.startswith(("tmp-", "old-")):
                    shutil.rmtree(p, ignore_errors=True)
                    actions.append(f"removed {root.name}/{p.name}")
            fsync_dir(root)
        return actions

    def repair_metrics(self, resume_step: int) -> list[str]:
        """Make metrics.jsonl the record of steps 1..`resume_step` exactly: a torn last line
        (power loss mid-append) is cut, and rows a killed run logged after its last resume state
        (which the resumed run logs again) are dropped. Returns warnings naming the file."""
        path = self.path / METRICS
        if not path.exists():
            return []
        warnings, keep = [], []
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                if i == len(lines) - 1 or all(not x.strip() for x in lines[i + 1 :]):
                    warnings.append(f"{path}: cut a torn last line ({len(line)} bytes)")
                    continue
                raise RunDirError(
                    f"{path} line {i + 1} is not JSON and is not the last line: the file is "
                    "damaged beyond a torn append; move it away to resume"
                ) from None
            if row.get("step", 0) <= resume_step:
                keep.append(line)
        dropped = sum(1 for x in lines if x.strip()) - len(keep) - len(warnings)
        if dropped:
            warnings.append(f"{path}: dropped {dropped} rows logged after step {resume_step}")
        if warnings:
            atomic_write_bytes(path, b"".join(x + b"\n" for x in keep))
        return warnings


def resolve_config(
    run_path: Path | None, config_path: str | None, overrides: list[str], default_config: str | Path
) -> tuple[TrainConfig, dict[str, tuple]]:
    """The config a (re)start uses, and the keys it changes against the pinned one.

    A new run (no `run_path/config.json`): `config_path` (or the default) with `overrides`. A run
    with a pinned config: the pinned config, or `config_path` if given, with `overrides`; a change
    to any key not in `SAFE_TO_CHANGE` is a `RunDirError` that names the keys."""
    from labkit.resources import find

    config_path = find(config_path) if config_path else None
    pinned_path = run_path / CONFIG if run_path is not None else None
    if pinned_path is None or not pinned_path.exists():
        return TrainConfig.load(config_path or default_config, overrides), {}
    try:
        pinned = json.loads(pinned_path.read_text())["train"]
    except (ValueError, KeyError, TypeError) as err:
        raise RunDirError(f"{pinned_path} is not a run config ({err}): cannot resume it") from err
    if config_path:
        cfg = TrainConfig.load(config_path, overrides)
    else:
        cfg = TrainConfig.from_dict(_apply(pinned, overrides))
    # fields added to labkit since the run was pinned take their defaults: not a change
    changes = config_changes(TrainConfig.from_dict(pinned).to_dict(), cfg.to_dict())
    unsafe = {k: v for k, v in changes.items() if not is_safe_change(k)}
    if unsafe:
        items = list(unsafe.items())
        listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in items[:4])
        if len(items) > 4:
            listed += f" and {', '.join(k for k, _ in items[4:])}"
        raise RunDirError(
            f"--resume would change {listed} of the run in {run_path}: a run keeps the config "
            f"pinned in {CONFIG}; start a new run dir for a different model, data or schedule "
            f"(keys safe to change: {', '.join(SAFE_TO_CHANGE)})"
        )
    return cfg, changes


def _apply(pinned: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    from labkit.config import apply_override

    data = json.loads(json.dumps(pinned))
    for item in overrides:
        apply_override(data, item)
    return data


__all__ = [
    "SAFE_TO_CHANGE",
    "RunWriter",
    "config_changes",
    "is_safe_change",
    "resolve_config",
]
