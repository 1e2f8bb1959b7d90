"""The data build's per-source stages, run in parallel processes and kept as they finish.

A build generates and curates each source independently of the others (the control corpus waits
for the synthetic one it rewrites), so `labkit data build` runs those stages in a process pool
over every core. Each finished stage is written to the build's work directory
(`<out>.partial/stages/`, gzipped JSON, with a digest of the config that made it), so a build
interrupted after some sources finished redoes only the others. The results, and so the data set,
are byte-identical to a serial build: every stage is a pure function of the config and its inputs,
and the build assembles them in the serial order.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

STAGES = "stages"


def config_digest(config: dict[str, Any]) -> str:
    """What a kept stage must have been made from: the data config, and the labkit version of
    the generators."""
    from labkit.data.world import GENERATOR_VERSION

    text = json.dumps({"config": config, "generator": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class StageStore:
    """Finished stages of one build, in `work/stages/`: `get` returns a kept result (None if
    there is none, or it was made from another config, or it cannot be read), `put` keeps one
    when it survives a JSON round trip exactly (a user source with values JSON cannot hold is
    simply recomputed on a resume)."""

    def __init__(self, work: Path, digest: str) -> None:
        self.root, self.digest = work / STAGES, digest
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json.gz"

    def get(self, key: str) -> Any | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            kept = json.loads(gzip.decompress(path.read_bytes()))
        except (OSError, ValueError):
            return None  # a torn write of a killed build: recompute
        return kept["value"] if kept.get("digest") == self.digest else None

    def put(self, key: str, value: Any) -> None:
        text = json.dumps({"digest": self.digest, "value": value})
        if json.loads(text)["value"] != value:
            return
        tmp = self._path(key).with_suffix(".partial")
        tmp.write_bytes(gzip.compress(text.encode(), compresslevel=1, mtime=0))
        os.replace(tmp, self._path(key))


def workers_for(requested: int | None, tasks: int) -> int:
    """Processes for `tasks` independent stages: `requested`, else every core (at most one per
    task)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(tasks, requested or cores or 1))


def run_stages(
    tasks: dict[str, tuple[Callable[..., Any], tuple, list[str]]],
    store: StageStore,
    workers: int,
    done: Callable[[str], None] = lambda key: None,
) -> dict[str, Any]:
    """Run `tasks` ({key: (function, args, keys it needs first)}; a needed key's result is
    appended to the args) with `workers` processes, taking kept results from `store` and keeping
    each new one there. Returns {key: result}."""
    results: dict[str, Any] = {}
    for key in tasks:
        kept = store.get(key)
        if kept is not None:
            results[key] = kept
            done(key)
    pending = {k: t for k, t in tasks.items() if k not in results}

    def ready() -> list[str]:
        return [k for k, (_, _, needs) in pending.items() if all(n in results for n in needs)]

    def args_of(key: str) -> tuple:
        fn, args, needs = pending[key]
        return (*args, *(results[n] for n in needs))

    if workers <= 1:
        while pending:
            key = ready()[0]
            fn = pending[key][0]
            results[key] = fn(*args_of(key))
            del pending[key]
            store.put(key, results[key])
            done(key)
        return results
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        running: dict[Any, str] = {}
        while pending or running:
            for key in ready():
                if key not in running.values():
                    running[pool.submit(pending[key][0], *args_of(key))] = key
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                key = running.pop(future)
                results[key] = future.result()  # a failed stage fails the build, as serially
                del pending[key]
                store.put(key, results[key])
                done(key)
    return results


__all__ = ["StageStore", "config_digest", "run_stages", "workers_for"]
