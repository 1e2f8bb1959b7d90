"""Reading a built data set for training: the mix's stages scaled to the run's token budget, each
stage one token stream of documents in plan order, read as windows of seq_len + 1 tokens.

The data position is two integers (stage, token offset into the stage's stream), the same on every
rank, so resuming is exact. Global window i of a micro-step goes to rank i // micro_batch: ranks
read disjoint slices, and the order does not depend on the world size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labkit.data.build import load_manifest
from labkit.data.mixing import stage_document_order
from labkit.data.shards import token_dtype, verify_shards
from labkit.errors import DataError


class SourceDocs:
    """All documents of one source (train or eval split) across its shards, as memmaps."""

    def __init__(self, data_dir: Path, kind: str, records: list[dict], vocab_size: int):
        dtype = token_dtype(vocab_size)
        self.shards, starts, ends, shard_ids = [], [], [], []
        for k, r in enumerate(records):
            tokens = np.memmap(data_dir / kind / r["file"], dtype=dtype, mode="r")
            offsets = np.load(data_dir / kind / r["index"])
            self.shards.append(tokens)
            starts.append(offsets)
            ends.append(np.append(offsets[1:], len(tokens)))
            shard_ids.append(np.full(len(offsets), k, dtype=np.int32))
        self.start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self.end = np.concatenate(ends) if ends else np.zeros(0, np.int64)
        self.shard = np.concatenate(shard_ids) if shard_ids else np.zeros(0, np.int32)

    @property
    def lengths(self) -> np.ndarray:
        return self.end - self.start

    def doc(self, i: int) -> np.ndarray:
        return self.shards[self.shard[i]][self.start[i] : self.end[i]]


class TokenStream:
    """Documents (each ending in <|endoftext|>) concatenated in a given order; reads wrap around."""

    def __init__(self, sources: dict[str, SourceDocs], order: list[tuple[str, int]]):
        if not order:
            empty = sorted(n for n, src in sources.items() if len(src.lengths) == 0)
            raise ValueError(
                "a data stage with no documents: "
                + (f"the sources {empty} have no training documents (curated away or set to 0); "
                   if empty else "")
                + "check the mix weights and the data card (`labkit data card DIR`)"
            )  # fmt: skip
        self.sources, self.order = sources, order
        lengths = np.array([sources[s].lengths[i] for s, i in order], dtype=np.int64)
        self.cum = np.concatenate([[0], np.cumsum(lengths)])
        self.total = int(self.cum[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        out = np.empty(length, dtype=np.int64)
        filled, pos = 0, start % self.total
        while filled < length:
            k = int(np.searchsorted(self.cum, pos, side="right")) - 1
            source, i = self.order[k]
            doc = self.sources[source].doc(i)
            within = pos - int(self.cum[k])
            take = min(length - filled, len(doc) - within)
            if take <= 0:  # a shard shorter than its index: never spin on it
                raise DataError(
                    f"document {i} of {source} ends before its indexed length: the data set is "
                    "corrupted; rebuild it with `labkit data build`"
                )
            out[filled : filled + take] = doc[within : within + take]
            filled += take
            pos = (pos + take) % self.total
        return out


@dataclass
class Position:
    stage: int = 0
    offset: int = 0  # tokens into the stage's stream


# Beyond about four passes over the same tokens, more passes are worth much less than new data
# (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models").
USEFUL_PASSES = 4.0


class MixedData:
    """The training stream of one mix, its stage boundaries scaled to `run_tokens`. `passes`: how
    many times the run reads each source's training documents (1.5 = each once, half twice)."""

    def __init__(self, data_dir: str | Path, mix: str, run_tokens: int, seed: int):
        self.dir = Path(data_dir)
        self.manifest = load_manifest(self.dir)
        verify_shards(self.dir, self.manifest)
        if mix not in self.manifest["mixes"]:
            raise ValueError(
                f"data.mix {mix!r} is not in {self.dir}/manifest.json; mixes there: "
                f"{sorted(self.manifest['mixes'])}"
            )
        vocab = self.manifest["tokenizer"]["vocab_size"]
        self.sources = {
            name: SourceDocs(self.dir, "train", recs, vocab)
            for name, recs in self.manifest["shards"]["train"].items()
        }
        plan = self.manifest["mixes"][mix]
        plan_total = plan[-1]["end_token"]
        self.stages, self.boundaries = [], []
        scale = run_tokens / plan_total
        sizes = {k: int(v.lengths.sum()) for k, v in self.sources.items()}
        read = {k: sum(s["tokens"].get(k, 0) for s in plan) * scale for k in sizes}
        self.passes = {k: float(f"{read[k] / sizes[k]:.3g}") for k in sizes if sizes[k] and read[k]}
        for stage in plan:
            scaled = dict(stage, tokens={k: int(v * scale) + 1 for k, v in stage["tokens"].items()})
            self.stages.append(scaled)
            self.boundaries.append(int(stage["end_token"] * scale))
        self.boundaries[-1] = max(self.boundaries[-1], run_tokens)
        self.seed = seed
        self._streams: dict[int, TokenStream] = {}
        self.eot_id = self.manifest["tokenizer"]["eot_id"]

    def stage_at(self, tokens_seen: int) -> int:
        for i, end in enumerate(self.boundaries):
            if tokens_seen < end:
                return i
        return len(self.boundaries) - 1

    def stream(self, stage: int) -> TokenStream:
        if stage not in self._streams:
            lengths = {k: v.lengths for k, v in self.sources.items()}
            order = stage_document_order(self.stages[stage], lengths, self.seed)
            self._streams = {stage: TokenStream(self.sources, order)}  # keep one stage in memory
        return self._streams[stage]

    def windows(
        self, pos: Position, first: int, count: int, seq_len: int, bos: int | None = None
    ) -> np.ndarray:
        """Windows first .. first+count-1 of the micro-step at `pos`: [count, seq_len + 1]. With
        `bos`, every window's first token is `bos` (an attention sink): the token it replaces is
        still predicted, as the last target of the window before."""
        stream = self.stream(pos.stage)
        start = pos.offset + first * seq_len
        flat = stream.read(start, count * seq_len + 1)
        idx = np.arange(count)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
        return with_bos(flat[idx], bos)


def passes_report(passes: dict[str, float]) -> tuple[str, str | None]:
    """One line saying how often a run reads each source, most-read first, and a warning (None
    when no source is read more than USEFUL_PASSES times)."""
    order = sorted(passes.items(), key=lambda kv: (-kv[1], kv[0]))
    line = "data passes: " + ", ".join(f"{k} {v:g}x" for k, v in order)
    over = [f"{k} ({v:g}x)" for k, v in order if v > USEFUL_PASSES]
    if not over:
        return line, None
    return line, (
        f"this run reads {', '.join(over)} more than {USEFUL_PASSES:g} times; past that, repeated "
        "tokens are worth much less than new ones (Muennighoff et al. 2023): build a larger data "
        "set, give those sources less mix weight, or lower train.tokens"
    )


class Loader:
    """This rank's training batches, in order; it owns the data position (stage, offset), which
    is the same on every rank and is all a resume state needs."""

    def __init__(
        self, data: MixedData, rank: int, world: int, micro_batch: int, bos: int | None = None
    ):
        self.data, self.rank, self.world, self.micro_batch = data, rank, world, micro_batch
        self.bos = bos  # every window starts with it (the model's bos_token_id), or not
        self.position = Position()

    def next_batch(self, seq_len: int, tokens_seen: int) -> np.ndarray:
        """This rank's next micro-batch [micro_batch, seq_len + 1]; a curriculum stage that
        starts at `tokens_seen` starts reading at its beginning."""
        stage = self.data.stage_at(tokens_seen)
        if stage != self.position.stage:
            self.position = Position(stage, 0)
        windows = self.data.windows(
            self.position, self.rank * self.micro_batch, self.micro_batch, seq_len, self.bos
        )
        self.position.offset += self.micro_batch * seq_len * self.world
        return windows

    @property
    def stage_name(self) -> str:
        return self.data.stages[self.position.stage]["name"]

    def state_dict(self) -> dict[str, int]:
        return {"stage": self.position.stage, "offset": self.position.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = Position(**state)


def with_bos(windows: np.ndarray, bos: int | None) -> np.ndarray:
    """`windows` [n, length] with their first token set to `bos` (unchanged for None)."""
    if bos is not None:
        windows = windows.copy()
        windows[:, 0] = bos
    return windows


def eval_windows(
    data_dir: str | Path, split: str, tokens: int, seq_len: int, bos: int | None = None
) -> np.ndarray:
    """The first `tokens` tokens of an eval split as non-overlapping windows [n, seq_len + 1],
    each starting with `bos` when given (as the model trained)."""
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    verify_shards(data_dir, manifest)
    if split not in manifest["shards"]["eval"]:
        raise ValueError(
            f"eval split {split!r} is not in {data_dir}; "
            f"splits: {sorted(manifest['shards']['eval'])}"
        )
    docs = SourceDocs(
        data_dir, "eval", manifest["shards"]["eval"][split], manifest["tokenizer"]["vocab_size"]
    )
    stream = TokenStream({split: docs}, [(split, i) for i in range(len(docs.lengths))])
    n = max(1, min(tokens, stream.total - 1) // seq_len)
    flat = stream.read(0, n * seq_len + 1)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return with_bos(flat[idx], bos)
