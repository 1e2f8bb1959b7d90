"""File helpers shared by the data build and checkpoints: hashing and atomic writes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a hidden temporary name, then rename: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        fsync_write(tmp, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
