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


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (POSIX: the directory entry is data of the directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # e.g. a platform without directory handles: the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_safetensors(path: str | Path, fix: str = "use another milestone") -> dict:
    """The tensors of a safetensors file; a truncated or corrupted one (safetensors raises its
    own error type, not OSError) is a `CheckpointError` naming the file and `fix`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        from labkit.errors import CheckpointError

        if isinstance(err, FileNotFoundError):
            raise
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{path} cannot be read as safetensors ({reason}): truncated or corrupted; {fix}"
        ) from None


def save_safetensors(tensors: dict, path: str | Path, metadata: dict | None = None) -> None:
    """Write a safetensors file through Python's own file API (fsynced), so a full disk is an
    OSError naming the file, as every other write is."""
    from safetensors.torch import save

    fsync_write(Path(path), save(tensors, metadata=metadata))


def check_output_dir(out: Path, marker: str, kind: str, overwrite: bool = False) -> None:
    """Refuse to write a `kind` into `out` when it holds something labkit did not write.

    `out` may be missing, an empty directory, or a directory holding `marker` (a labkit artefact
    of the same kind, replaced as a whole); anything else is an `OutputExistsError` naming it,
    unless `overwrite`. A file at `out` is refused even with `overwrite`."""
    from labkit.errors import OutputExistsError

    for parent in out.absolute().parents:  # e.g. --out notes.txt/data: mkdir's bare ENOTDIR
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(
                    f"{out} cannot be created: {parent} is a file, not a directory; choose "
                    "another output path"
                )
            break
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise OutputExistsError(f"{out} is a file, not a directory: choose another output path")
    if overwrite or (out / marker).exists() or not any(out.iterdir()):
        return
    raise OutputExistsError(
        f"{out} is not empty and is not a labkit {kind} (no {marker}): nothing was touched; "
        "choose another output directory, or pass --overwrite to replace its contents"
    )
