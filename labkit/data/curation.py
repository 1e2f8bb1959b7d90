"""Curation of any text source, on `datasets`: normalisation, PII redaction, exact and near
deduplication, heuristic quality filters (seed 003), and an eval-contamination filter. Every stage
reports documents in and out.

Documents are dicts with at least `text` and `source`; extra metadata (labels, character spans) is
carried alongside and spans are remapped when a stage rewrites the text.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.config import CurationSection
from labkit.errors import DataError

# --------------------------------------------------------------------------- loading
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet"}


def load_text_source(
    name: str, path: str | None = None, hub: str | None = None, text_field: str = "text",
    split: str = "train", limit: int | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Documents of a local file or folder (json/jsonl/text/parquet) or, where a network exists, a
    Hugging Face Hub dataset, through `datasets.load_dataset`. Errors name the source."""
    import datasets

    if path:
        p = Path(path)
        files = sorted(x for x in p.rglob("*") if x.suffix in LOCAL_FORMATS) if p.is_dir() else [p]
        if not p.exists() or not files:
            raise FileNotFoundError(
                f"source {name!r}: {path} does not exist or holds no "
                f"{'/'.join(sorted(LOCAL_FORMATS))} files"
            )
        kinds = {LOCAL_FORMATS.get(f.suffix) for f in files}
        if None in kinds or len(kinds) != 1:
            raise ValueError(
                f"source {name!r}: files must share one format of {sorted(LOCAL_FORMATS)}, "
                f"got {sorted(f.suffix for f in files)}"
            )
        kind = kinds.pop()
        for f in files:  # datasets' own errors name neither the file nor the line
            check_local_file(name, f, kind, text_field)
        kwargs = {"sample_by": "document"} if kind == "text" else {}
        quiet = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # labkit shows its own progress
        try:
            ds = datasets.load_dataset(
                kind, data_files=[str(f) for f in files], split="train", **kwargs
            )
        except Exception as err:  # datasets raises many kinds; the user needs the source name
            raise ValueError(f"source {name!r}: cannot read {path}: {err}") from err
        finally:
            if not quiet:
                datasets.enable_progress_bars()
    elif hub:
        try:
            ds = datasets.load_dataset(hub, split=split)
        except Exception as err:
            raise ValueError(
                f"source {name!r}: cannot load Hub dataset {hub!r} (no network here?): {err}"
            ) from err
    else:
        raise ValueError(f"source {name!r}: give `path` (a local file or folder) or `hub`")
    if text_field not in ds.column_names:
        raise ValueError(
            f"source {name!r}: no field {text_field!r}; fields are {ds.column_names} "
            "(set text_field)"
        )
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    # Every other field travels with the document (labels for probes, provenance); a field named
    # `id` is kept as the document's id, and `spans` (a list of {start, end, type, ...} character
    # offsets) become the document's spans, which curation keeps aligned when it rewrites text.
    extra = [c for c in ds.column_names if c not in (text_field, "id", "spans")]
    docs = []
    for i, row in enumerate(ds):
        doc = {"text": row[text_field] or "", "source": name, "id": f"{name}-{i:07d}"}
        if row.get("id") not in (None, ""):
            doc["id"] = str(row["id"])
        if row.get("spans"):
            doc["spans"] = _user_spans(name, doc["id"], row["spans"], len(doc["text"]))
        if extra:
            doc["fields"] = {c: row[c] for c in extra}
        docs.append(doc)
    if not docs:
        raise DataError(f"source {name!r}: {path or hub} holds no documents")
    ids = [d["id"] for d in docs]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise ValueError(
            f"source {name!r}: the id {dup!r} occurs more than once; ids must be unique"
        )
    return docs


def check_local_file(source: str, path: Path, kind: str, text_field: str = "text") -> None:
    """A local source file read once as labkit will use it, so that a bad one is one line naming
    the file and the line: UTF-8 text; for json/jsonl, at least one document, every line (or
    item) a JSON object whose `text_field`, where present, is a string. Raises `DataError`."""
    import json

    where = f"source {source!r}: {path}"
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{where} line {line} is not UTF-8 text (byte {err.start}, {err.reason}): save the "
            "file as UTF-8"
        ) from None
    if kind != "json":
        return
    if not text.strip():
        raise DataError(f"{where} is empty: it holds no documents")
    rows: list[tuple[str, Any]] = []
    whole: Any = None
    if path.suffix == ".json":
        try:
            whole = json.loads(text)
        except ValueError:
            whole = None  # JSON Lines in a .json file, as datasets reads it too
    if isinstance(whole, list):
        rows = [(f"item {i}", row) for i, row in enumerate(whole)]
    elif isinstance(whole, dict):
        column = whole.get(text_field)
        if isinstance(column, list):  # columns: {"text": [...], ...}
            rows = [(f"{text_field}[{i}]", {text_field: v}) for i, v in enumerate(column)]
        else:
            rows = [("the object", whole)]
    else:
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"line {i}", json.loads(line)))
            except ValueError as err:
                raise DataError(
                    f"{where} line {i} is not JSON ({getattr(err, 'msg', err)}): "
                    f"{line.strip()[:60]!r}; fix or remove that line"
                ) from None
    if not rows:
        raise DataError(f"{where} holds no documents")
    for at, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{where} {at} is {type(row).__name__}, not a JSON object")
        value = row.get(text_field)
        if value is not None and not isinstance(value, str):
            what = {bool: "a boolean", int: "a number", float: "a number", list: "a list",
                    dict: "an object"}.get(type(value), type(value).__name__)  # fmt: skip
            raise DataError(
                f"{where} {at}: {text_field!r} is {what} ({str(value)[:40]}), "
                "not a string; quote it, or set text_field to the field that holds the text"
            )


def _user_spans(source: str, doc_id: str, spans: list, length: int) -> list[dict[str, Any]]:
    """Character-offset spans brought with a document, checked: each needs integer `start` <
    `end` within the text; `type` defaults to "span"."""
    out = []
    for k, span in enumerate(spans):
        start, end = (span.get("start"), span.get("end")) if isinstance(span, dict) else (0, 0)
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= length):
            raise ValueError(
                f"source {source!r}, document {doc_id!r}: spans[{k}] needs integer start < end "
                f"within the text (0..{length}), got {span!r}"
            )
        out.append({"type": "span", **{key: v for key, v in span.items() if v is not None}})
    return out


# --------------------------------------------------------------------------- text edits
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]")
PII_PATTERNS = [
    ("<EMAIL>", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("<SSN>", re.compile(r"\b\d{3}-\d{2}-\d{4}\b")),
    ("<IP>", re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")),
    (
        "<PHONE>",
        re.compile(r"(?<![\w.])(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}\b"),
    ),
]
URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)


def _remap(spans: list[dict], edits: list[tuple[int, int, int]]) -> list[dict]:
    """Shift spans through edits (start, end, new_length), sorted and non-overlapping; spans that
    overlap an edit are dropped."""
    out = []
    for s in spans:
        shift, keep = 0, True
        for start, end, new_len in edits:
            if end <= s["start"]:
                shift += new_len - (end - start)
            elif start < s["end"]:
                keep = False
                break
        if keep:
            out.append(dict(s, start=s["start"] + shift, end=s["end"] + shift))
    return out


def normalize(doc: dict) -> dict:
    """NFKC and control-character stripping, character by character so spans can follow."""
    text = doc["text"]
    if text.isascii() and not _CONTROL.search(text):
        return doc
    pieces, edits = [], []
    for pos, ch in enumerate(text):
        new = "" if _CONTROL.match(ch) and ch not in "\n\t" else unicodedata.normalize("NFKC", ch)
        if new != ch:
            edits.append((pos, pos + 1, len(new)))
        pieces.append(new)
    new_text = "".join(pieces)
    # NFKC can compose across characters; keep the whole-string form and drop spans if it differs.
    whole = unicodedata.normalize("NFKC", _CONTROL.sub("", text.replace("\r\n", "\n")))
    spans = doc.get("spans")
    if whole != new_text:
        new_text, spans = whole, [] if spans else spans
    elif spans:
        spans = _remap(spans, edits)
    return dict(doc, text=new_text, **({"spans": spans} if spans is not None else {}))


def redact_pii(doc: dict) -> dict:
    text, spans = doc["text"], doc.get("spans")
    for placeholder, pattern in PII_PATTERNS:
        matches = list(pattern.finditer(text))
        if not matches:
            continue
        if spans:
            spans = _remap(spans, [(m.start(), m.end(), len(placeholder)) for m in matches])
        text = pattern.sub(placeholder, text)
    if text == doc["text"]:
        return doc
    return dict(doc, text=text, **({"spans": spans} if spans is not None else {}))


def pii_counts(text: str) -> dict[str, int]:
    """How many of each placeholder `redact_pii` puts into `text`."""
    counts = {}
    for placeholder, pattern in PII_PATTERNS:
        n = len(pattern.findall(text))
        if n:
            counts[placeholder] = n
            text = pattern.sub(placeholder, text)
    return counts


def change_example(before: dict, after: dict, context: int = 20, width: int = 70) -> dict[str, str]:
    """Where a stage first changed a document's text: its id and `width` characters from a little
    before that place, before and after the change (for the card)."""
    a, b = before["text"], after["text"]
    pairs = enumerate(zip(a, b, strict=False))  # strict=False: the texts may differ in length
    start = next((k for k, (x, y) in pairs if x != y), min(len(a), len(b)))
    lo = max(0, start - context)
    return {"id": str(before.get("id", "")), "before": " ".join(a[lo : lo + width].split()),
            "after": " ".join(b[lo : lo + width].split())}  # fmt: skip


# --------------------------------------------------------------------------- quality
@dataclass
class QualityRules:
    """Seed 003's heuristics; shares are of non-space characters."""

    max_non_alnum: float = 0.25
    max_digits: float = 0.15
    max_url: float = 0.20
    mean_word_len: tuple[float, float] = (3.0, 10.0)
    min_words: int = 50
    max_words: int = 100_000

    @classmethod
    def from_section(cls, c: CurationSection) -> QualityRules:
        return cls(
            c.max_non_alnum,
            c.max_digits,
            c.max_url,
            tuple(c.mean_word_len),
            c.min_words,
            c.max_words,
        )

    def reasons(self, text: str) -> list[str]:
        chars = [c for c in text if not c.isspace()]
        n = max(1, len(chars))
        words = text.split()
        out = []
        if not self.min_words <= len(words) <= self.max_words:
            out.append("length")
        if sum(not c.isalnum() for c in chars) / n >= self.max_non_alnum:
            out.append("non_alnum")
        if sum(c.isdigit() for c in chars) / n >= self.max_digits:
            out.append("digits")
        if sum(len(m.group()) for m in URL.finditer(text)) / n >= self.max_url:
            out.append("urls")
        mean = sum(len(w) for w in words) / max(1, len(words))
        if words and not self.mean_word_len[0] <= mean <= self.mean_word_len[1]:
            out.append("word_length")
        return out


# --------------------------------------------------------------------------- dedup, contamination
def _canonical(text: str) -> str:
    return " ".join(text.lower().split())


def _shingles(text: str, n: int) -> set[bytes]:
    words = _canonical(text).split()
    if len(words) < n:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


def ngram_hashes(text: str, n: int) -> set[int]:
    words = re.findall(r"\w+", text.lower())
    return {
        int.from_bytes(hashlib.blake2b(" ".join(words[i : i + n]).encode(), digest_size=8).digest())
        for i in range(len(words) - n + 1)
    }


@dataclass
class StageReport:
    stage: str
    docs_in: int
    docs_out: int
    detail: dict[str, int] = field(default_factory=dict)
    # A few removed documents: id, why, and the opening of the text, so a loss can be judged.
    examples: list[dict[str, str]] = field(default_factory=list)


MAX_EXAMPLES = 3
WARN_REMOVED_SHARE = 0.10  # a stage removing more of a source than this is reported loudly


def curation_warnings(source: str, reports: list[dict[str, Any]]) -> list[str]:
    """One line per stage that removed more than WARN_REMOVED_SHARE of `source`'s documents,
    naming the stage, the share and the reason (its detail and first example)."""
    total = reports[0]["docs_in"] if reports else 0
    lines = []
    for r in reports:
        removed = r["docs_in"] - r["docs_out"]
        if total and removed / total > WARN_REMOVED_SHARE:
            why = ", ".join(f"{k} {v}" for k, v in r["detail"].items()) or STAGE_REASONS.get(
                r["stage"], r["stage"]
            )
            first = r["examples"][0]["reason"] if r.get("examples") else ""
            lines.append(
                f"warning: curation stage {r['stage']!r} removed {removed} of {total} "
                f"{source} documents ({100 * removed / total:.0f}%): {why}"
                + (f"; e.g. {first}" if first else "")
            )
    return lines


STAGE_REASONS = {
    "exact_dedup": "an exact copy of an earlier document or of held-out text",
    "near_dedup": "a near-duplicate (MinHash) of an earlier document or of held-out text",
    "contamination": "shares an n-gram with an eval task text or another source's held-out text",
}


def _first_shared_ngram(text: str, banned: set[int], n: int) -> str:
    words = re.findall(r"\w+", text.lower())
    for i in range(len(words) - n + 1):
        gram = " ".join(words[i : i + n])
        if int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=8).digest()) in banned:
            return gram
    return ""


def curate(
    docs: list[dict], cfg: CurationSection, reference_texts: Iterable[str] = (),
    contamination_texts: Iterable[str] = (), quality_sources: set[str] | None = None,
    progress: Callable[[Iterable, str], Iterable] | None = None,
) -> tuple[list[dict], list[StageReport]]:  # fmt: skip
    """Run every stage; return surviving documents (order kept: earlier documents win ties) and a
    report per stage.

    reference_texts: held-out documents; train copies and near-copies of them are dropped by the
    dedup stages. contamination_texts: eval task texts; documents sharing a
    `contamination_ngram`-word n-gram with any are dropped. quality_sources: sources the prose
    heuristics apply to (None: all)."""
    import datasets

    # labkit shows its own progress; datasets' bars would print once per stage and source.
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        return _curate(docs, cfg, reference_texts, contamination_texts, quality_sources, progress)
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _near_unique(ds, references: list[str], cfg: CurationSection, wrap) -> set[int]:
    """Row ids that have no near-duplicate (MinHash-LSH) among the references or earlier rows."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=cfg.minhash_threshold, num_perm=cfg.minhash_num_perm)

    def minhash(text: str) -> MinHash:
        m = MinHash(num_perm=cfg.minhash_num_perm, seed=1)
        m.update_batch(list(_shingles(text, cfg.shingle_words)))
        return m

    for j, text in enumerate(references):
        lsh.insert(f"reference-{j}", minhash(text))
    keep_ids: set[int] = set()
    for r in wrap(ds, "near_dedup"):
        m = minhash(r["text"])
        if not lsh.query(m):
            lsh.insert(str(r["i"]), m)
            keep_ids.add(r["i"])
    return keep_ids


def _fingerprint(ds, stage: str) -> str:
    """A cheap, unique-per-step fingerprint for in-memory `datasets` steps."""
    return hashlib.sha256(f"{ds._fingerprint}:{stage}".encode()).hexdigest()[:16]


def _curate(docs, cfg, reference_texts, contamination_texts, quality_sources, progress):
    import datasets

    wrap = progress or (lambda it, desc: it)
    reports: list[StageReport] = []

    # Texts go through `datasets`; metadata rides alongside by index.
    ds = datasets.Dataset.from_dict(
        {"i": list(range(len(docs))), "text": [d["text"] for d in docs]}
    )
    rows = {i: dict(d) for i, d in enumerate(docs)}

    def rewrite(stage: str, fn: Callable[[dict], dict], count=None) -> None:
        """A stage that edits text: counts the documents whose text changed (and, with `count`,
        what was replaced), with a few before/after examples for the card."""
        nonlocal ds
        changed, detail, examples = 0, {}, []
        for i in wrap(list(rows), stage):
            new = fn(rows[i])
            if new["text"] != rows[i]["text"]:
                changed += 1
                for key, n in (count(rows[i]["text"]) if count else {}).items():
                    detail[key] = detail.get(key, 0) + n
                if len(examples) < MAX_EXAMPLES:
                    examples.append(change_example(rows[i], new))
            rows[i] = new
        # A fixed fingerprint: otherwise `datasets` hashes the closure by pickling every row's
        # metadata (spans, checks, cast) at each stage, which dominated the build's time.
        ds = ds.map(
            lambda r: {"text": rows[r["i"]]["text"]},
            desc=stage,
            keep_in_memory=True,
            new_fingerprint=_fingerprint(ds, stage),
        )
        reports.append(
            StageReport(stage, len(ds), len(ds), {"rewritten": changed, **detail}, examples)
        )

    def drop(
        stage: str,
        keep: Callable[[dict], bool],
        detail: dict[str, int] | None = None,
        reason: Callable[[dict], str] | None = None,
    ) -> None:
        nonlocal ds
        before = ds["i"]
        ds = ds.filter(
            keep, desc=stage, keep_in_memory=True, new_fingerprint=_fingerprint(ds, stage)
        )
        removed = sorted(set(before) - set(ds["i"]))[:MAX_EXAMPLES]
        examples = [
            {
                "id": str(rows[i].get("id", i)),
                "reason": reason(rows[i]) if reason else STAGE_REASONS.get(stage, stage),
                "text": " ".join(rows[i]["text"].split())[:160],
            }
            for i in removed
        ]
        reports.append(StageReport(stage, len(before), len(ds), detail or {}, examples))

    rewrite("normalize", normalize)
    rewrite("pii", redact_pii, pii_counts)

    references = [normalize({"text": t})["text"] for t in reference_texts]
    seen = {hashlib.sha256(_canonical(t).encode()).hexdigest() for t in references}

    def first_copy(r: dict) -> bool:
        h = hashlib.sha256(_canonical(r["text"]).encode()).hexdigest()
        if h in seen:
            return False
        seen.add(h)
        return True

    drop("exact_dedup", first_copy)

    reasons: dict[str, int] = {}
    rules = QualityRules.from_section(cfg)

    def good(r: dict) -> bool:
        if quality_sources is not None and rows[r["i"]]["source"] not in quality_sources:
            return True
        bad = rules.reasons(r["text"])
        for reason in bad:
            reasons[reason] = reasons.get(reason, 0) + 1
        return not bad

    drop("quality", good, reasons, lambda d: "quality: " + ", ".join(rules.reasons(d["text"])))

    keep_ids = _near_unique(ds, references, cfg, wrap)
    drop("near_dedup", lambda r: r["i"] in keep_ids)

    banned: set[int] = set()
    for text in contamination_texts:
        banned |= ngram_hashes(text, cfg.contamination_ngram)
    n = cfg.contamination_ngram
    drop(
        "contamination",
        lambda r: not banned or ngram_hashes(r["text"], n).isdisjoint(banned),
        reason=lambda d: (
            f"shares the {n}-gram {_first_shared_ngram(d['text'], banned, n)!r} with "
            "an eval task text or another source's held-out text"
        ),
    )
    return [rows[i] for i in ds["i"]], reports
