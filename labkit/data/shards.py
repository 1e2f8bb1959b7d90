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
