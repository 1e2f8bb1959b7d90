"""Analysis results kept beside a milestone, so a rebuild of the figures reads each milestone's
activations from disk instead of running the model again.

    runs/<id>/cache/<milestone>/<kind>/<weights>-<inputs>/<name>.npy

`<weights>` is the checkpoint's SHA-256 (recorded in its meta and verified whenever it is
loaded), `<inputs>` a digest of everything the result depends on (the tokens, the positions,
the sites and layers, the precision). An entry made from other weights is removed the next time
the milestone's cache is opened; other inputs simply make another entry. Entries are written to
a temporary directory and renamed, and read with `allow_pickle=False`: a damaged or tampered
entry is recomputed, never executed. A checkpoint outside a run directory (a milestone copied
alone) keeps no cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np

from labkit.run.layout import CACHE
from labkit.run.milestone import Milestone

DONE = "complete"  # the last file an entry gets: an entry without it is a killed write


def digest(*parts: Any) -> str:
    """A stable digest of arrays, token sequences, strings and JSON-able values."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(f"array{part.dtype}{part.shape}".encode())
            h.update(np.ascontiguousarray(part).tobytes())
        elif (
            isinstance(part, (list, tuple))
            and part
            and isinstance(part[0], (list, tuple, np.ndarray))
        ):
            lengths = np.asarray([len(s) for s in part], dtype=np.int64)
            h.update(b"sequences" + lengths.tobytes())
            h.update(np.concatenate([np.asarray(s, dtype=np.int64) for s in part]).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"|")
    return h.hexdigest()


class MilestoneCache:
    """The cache of one milestone (a no-op for a checkpoint outside a run directory, or when
    LABKIT_NO_CACHE=1)."""

    def __init__(self, milestone: Milestone) -> None:
        self.weights = (milestone.model_sha256 or "")[:16]
        run_dir = milestone.run_dir
        off = os.environ.get("LABKIT_NO_CACHE") == "1" or not self.weights or run_dir is None
        self.root = None if off else run_dir / CACHE / milestone.name
        if self.root is not None and self.root.is_dir():
            for kind in self.root.iterdir():  # entries of weights this milestone no longer has
                for entry in kind.iterdir() if kind.is_dir() else ():
                    if not entry.name.startswith(self.weights + "-"):
                        shutil.rmtree(entry, ignore_errors=True)

    def arrays(
        self, kind: str, inputs: tuple, compute: Callable[[], dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """`compute()` (named arrays), or what an earlier call with the same kind, weights and
        inputs kept."""
        if self.root is None:
            return compute()
        entry = self.root / kind / f"{self.weights}-{digest(kind, *inputs)[:24]}"
        if (entry / DONE).exists():
            try:
                names = json.loads((entry / DONE).read_text())
                return {n: np.load(entry / f"{n}.npy", allow_pickle=False) for n in names}
            except (OSError, ValueError):
                shutil.rmtree(entry, ignore_errors=True)  # damaged: computed again below
        arrays = compute()
        tmp = entry.with_name(f".{entry.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, value in arrays.items():
            np.save(tmp / f"{name}.npy", np.asarray(value), allow_pickle=False)
        (tmp / DONE).write_text(json.dumps(sorted(arrays)))
        shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
        return arrays


__all__ = ["MilestoneCache", "digest"]
