"""Token shards: documents' token ids, each followed by <|endoftext|>, packed into flat memmap-able
files (uint16, or uint32 above 65,535 ids), with an index of document start offsets. Every file is
written to a temporary name and renamed, so an interrupted build leaves no half-written shard."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from labkit.fileio import atomic_write_bytes, sha256_file

__all__ = ["atomic_write_bytes", "iter_documents", "read_shard", "sha256_file", "write_shards"]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65_536 else np.dtype(np.uint32)


def write_shards(
    docs_tokens: list[list[int]], out_dir: Path, prefix: str, eot_id: int, vocab_size: int,
    tokens_per_shard: int,
) -> list[dict]:  # fmt: skip
    """Write `prefix`_NNNNN.bin/.idx.npy shards; documents never straddle shards. Returns one
    record per shard: file names, documents, tokens and SHA-256s."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    records: list[dict] = []
    batch: list[list[int]] = []
    size = 0

    def flush() -> None:
        nonlocal batch, size
        if not batch:
            return
        k = len(records)
        flat = np.fromiter(
            (t for doc in batch for t in (*doc, eot_id)), dtype=dtype, count=size + len(batch)
        )
        offsets = np.cumsum([0] + [len(d) + 1 for d in batch[:-1]], dtype=np.int64)
        bin_path, idx_path = (
            out_dir / f"{prefix}_{k:05d}.bin",
            out_dir / f"{prefix}_{k:05d}.idx.npy",
        )
        atomic_write_bytes(bin_path, flat.tobytes())
        buf = io.BytesIO()
        np.save(buf, offsets, allow_pickle=False)
        atomic_write_bytes(idx_path, buf.getvalue())
        records.append(
            {
                "file": bin_path.name,
                "index": idx_path.name,
                "documents": len(batch),
                "tokens": int(flat.size),
                "sha256": sha256_file(bin_path),
                "index_sha256": sha256_file(idx_path),
            }
        )
        batch, size = [], 0

    for doc in docs_tokens:
        if size and size + len(doc) + 1 > tokens_per_shard:
            flush()
        batch.append(doc)
        size += len(doc)
    flush()
    return records


def read_shard(bin_path: Path, vocab_size: int) -> np.memmap:
    return np.memmap(bin_path, dtype=token_dtype(vocab_size), mode="r")


def iter_documents(bin_path: Path, vocab_size: int) -> Iterator[np.ndarray]:
    """Token arrays of a shard's documents (each ending with <|endoftext|>)."""
    tokens = read_shard(bin_path, vocab_size)
    offsets = np.load(bin_path.with_name(bin_path.name.replace(".bin", ".idx.npy")))
    ends = list(offsets[1:]) + [len(tokens)]
    for start, end in zip(offsets, ends, strict=True):
        yield tokens[start:end]


# --------------------------------------------------------------------------- verification
def _verified_cache(data_dir: Path) -> Path:
    """Where the verified (size, mtime) of a data set's shards are remembered: a user cache, so
    a read-only or shared data set is verified once per user, not once per run."""
    import hashlib
    import os

    root = os.environ.get("LABKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "labkit"
    )
    key = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:24]
    return Path(root) / "verified" / f"{key}.json"


def verify_shards(data_dir: str | Path, manifest: dict) -> None:
    """Check every shard and index the manifest lists: present, of the size its token count
    implies, and with the SHA-256 the manifest records. The full hash runs once per file and is
    cached by (size, mtime); a later open only stats the files. Raises `DataError` naming the
    first bad file."""
    import json

    from labkit.errors import DataError

    data_dir = Path(data_dir)
    itemsize = token_dtype(manifest["tokenizer"]["vocab_size"]).itemsize
    cache_path = _verified_cache(data_dir)
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    verified: dict = cache if isinstance(cache, dict) else {}
    rebuild = f"rebuild it with `labkit data build --config ... --out {data_dir} --overwrite`"
    changed = False
    for kind in ("train", "eval"):
        for records in manifest["shards"][kind].values():
            for r in records:
                checks = [(r["file"], r.get("sha256"), r["tokens"] * itemsize)]
                checks.append((r["index"], r.get("index_sha256"), None))
                for name, sha, size in checks:
                    path = data_dir / kind / name
                    rel = f"{kind}/{name}"
                    if not path.is_file():
                        raise DataError(f"{path} is missing from the data set: {rebuild}")
                    stat = path.stat()
                    if size is not None and stat.st_size != size:
                        raise DataError(
                            f"{path} is {stat.st_size:,} bytes, manifest.json says {size:,} "
                            f"(truncated or corrupted): {rebuild}"
                        )
                    if sha is None:
                        raise DataError(f"{data_dir}/manifest.json has no SHA-256 for {rel}")
                    seen = [stat.st_size, stat.st_mtime_ns, sha]
                    if verified.get(rel) == seen:
                        continue
                    if sha256_file(path) != sha:
                        raise DataError(
                            f"{path} does not match its SHA-256 in manifest.json (corrupted): "
                            f"{rebuild}"
                        )
                    verified[rel] = seen
                    changed = True
    if changed:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(cache_path, json.dumps(verified, sort_keys=True).encode())
        except OSError:
            pass  # no writable cache: the next open verifies again, which is only slower
