"""Corpus measures with their targets: what `labkit data card` and the manifest report, and what
the tests assert on the ci build. Pure functions over lists of document dicts.

- `leaks`: documents whose text carries internal markup (a `kind|id|` mention mark, the control
  bytes the renderer uses, an unrendered `{slot}`).
- `duplicate_sentence_share`: the share of sentences (>= 4 words) that occur verbatim elsewhere
  in the same corpus — the templated-text measure.
- `gzip_ratio`: compressed / raw bytes of the corpus text (lower is more repetitive).
- `copy_pressure`: of all repeated in-document entity mentions (every mention of an entity after
  its first in the same document), the share whose entity occurs in at most 2 training
  documents — a name a model can only predict by copying it from earlier in the context.
- `source_shares`: per mix and stage, every source's share of the stage's tokens.
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from typing import Any

# Internal tokens that must never reach text: the span marks (`city|23|`), the renderer's
# control bytes, and a template slot left unfilled.
LEAK_PATTERNS: dict[str, re.Pattern[str]] = {
    "mark": re.compile(
        r"\b(?:city|person|organisation|element|species|event|number|answer|country)\|[^|\s]*\|"
    ),
    "control_byte": re.compile(r"[\x01\x02\x03]"),
    "template_slot": re.compile(r"\{[a-z_][a-z_0-9.]*\}"),
}
GENERATED_SOURCES = ("synthetic", "control", "retrieval")
ENTITY_TYPES = ("city", "person", "organisation", "element", "species", "event")
SENTENCE_MIN_WORDS = 4
RARE_DOCS = 2  # "occurs in at most 2 training documents"

# Targets on the ci build; the card prints each measure next to its target.
TARGETS: dict[str, tuple[str, float]] = {
    "leaks": ("==", 0),
    "duplicate_sentence_share.synthetic": ("<=", 0.15),
    "duplicate_sentence_share.control": ("<=", 0.30),
    "gzip_ratio.synthetic": (">=", 0.27),
    "copy_pressure": (">=", 0.30),
    "mix_other_source_gap_pp": ("<=", 2.0),
}

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def leaks(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Occurrences of internal markup, per pattern, the documents holding any, and up to 3
    examples."""
    counts = {name: 0 for name in LEAK_PATTERNS}
    examples: list[str] = []
    documents = 0
    for d in docs:
        found = False
        for name, pattern in LEAK_PATTERNS.items():
            if name == "template_slot" and d.get("source") not in GENERATED_SOURCES:
                continue  # real code and prose may hold braces; only rendered text cannot
            for m in pattern.finditer(d["text"]):
                counts[name] += 1
                found = True
                if len(examples) < 3:
                    lo = max(0, m.start() - 30)
                    examples.append(f"{d.get('id', '?')}: …{d['text'][lo : m.end() + 30]!r}…")
        documents += found
    return {
        "total": sum(counts.values()),
        "documents": documents,
        "by_pattern": counts,
        "examples": examples,
    }


def sentences(text: str) -> list[str]:
    """Sentences and lines of a text with at least SENTENCE_MIN_WORDS words."""
    parts = (" ".join(p.split()) for p in _SENTENCE_END.split(text))
    return [p for p in parts if len(p.split()) >= SENTENCE_MIN_WORDS]


def duplicate_sentence_share(docs: list[dict[str, Any]]) -> float:
    """Share of sentences (>= 4 words) whose exact text occurs more than once in the corpus."""
    counts = Counter(s for d in docs for s in sentences(d["text"]))
    total = sum(counts.values())
    return round(sum(c for c in counts.values() if c > 1) / total, 4) if total else 0.0


def gzip_ratio(docs: list[dict[str, Any]]) -> float:
    blob = "\n\n".join(d["text"] for d in docs).encode()
    return round(len(gzip.compress(blob, mtime=0)) / len(blob), 4) if blob else 0.0


def _entity_mentions(doc: dict[str, Any]) -> list[str]:
    """Entity keys of a document's mention spans in text order (`type:id`)."""
    spans = sorted(doc.get("spans", []), key=lambda s: s["start"])
    return [f"{s['type']}:{s['id']}" for s in spans if s["type"] in ENTITY_TYPES]


def entity_counts(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """How many distinct entities the corpus mentions and in how many documents each occurs."""
    doc_freq: Counter[str] = Counter()
    for d in docs:
        doc_freq.update(set(_entity_mentions(d)))
    freqs = sorted(doc_freq.values())
    return {
        "entities": len(doc_freq),
        "rare_entities": sum(f <= RARE_DOCS for f in freqs),
        "median_documents_per_entity": freqs[len(freqs) // 2] if freqs else 0,
        "core_median_documents_per_entity": _median([f for f in freqs if f > RARE_DOCS]),
    }


def _median(xs: list[int]) -> int:
    return xs[len(xs) // 2] if xs else 0


def copy_pressure(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Share of repeated in-document entity mentions whose entity occurs in <= 2 documents."""
    per_doc = [_entity_mentions(d) for d in docs]
    doc_freq: Counter[str] = Counter()
    for mentions in per_doc:
        doc_freq.update(set(mentions))
    repeated = rare = 0
    for mentions in per_doc:
        seen: set[str] = set()
        for key in mentions:
            if key in seen:
                repeated += 1
                rare += doc_freq[key] <= RARE_DOCS
            seen.add(key)
    return {
        "repeated_mentions": repeated,
        "rare_repeated_mentions": rare,
        "share": round(rare / repeated, 4) if repeated else 0.0,
    }


def source_shares(mixes: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict]]:
    """Per mix and stage: token boundaries and each source's share of the stage's tokens."""
    out: dict[str, dict[str, dict]] = {}
    for name, stages in mixes.items():
        out[name] = {}
        for st in stages:
            tokens = st.get("tokens", {})
            total = sum(tokens.values()) or 1
            out[name][st["name"]] = {
                "start_token": st["start_token"],
                "end_token": st["end_token"],
                "shares": {k: round(v / total, 4) for k, v in sorted(tokens.items())},
            }
    return out


def arm_difference(
    mixes: dict[str, list[dict[str, Any]]], dense: str = "dense", control: str = "control"
) -> dict[str, Any] | None:
    """How the dense and control mixes differ: whether their stages share boundaries, and the
    largest gap (pp) in the share of any source other than the dense/control text itself."""
    if dense not in mixes or control not in mixes:
        return None
    a, b = mixes[dense], mixes[control]
    same_stages = [(s["name"], s["start_token"], s["end_token"]) for s in a] == [
        (s["name"], s["start_token"], s["end_token"]) for s in b
    ]
    gap = 0.0
    for sa, sb in zip(a, b, strict=False):
        ta, tb = sa.get("tokens", {}), sb.get("tokens", {})
        na, nb = sum(ta.values()) or 1, sum(tb.values()) or 1
        for src in (set(ta) | set(tb)) - {"synthetic", "control"}:
            gap = max(gap, abs(ta.get(src, 0) / na - tb.get(src, 0) / nb))
    return {
        "same_stage_boundaries": same_stages,
        "max_other_source_gap_pp": round(100 * gap, 2),
        "differs_in": "the synthetic text: high-density documents (dense) vs low-density "
        "prose about the same entities at the same token budget (control)",
    }


def corpus_measures(
    train: dict[str, list[dict[str, Any]]],
    held: dict[str, list[dict[str, Any]]],
    mixes: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    """Every measure of the data set, for the manifest (`measures`) and the card."""
    every = [d for docs in (*train.values(), *held.values()) for d in docs]
    generated = {n: train[n] for n in ("synthetic", "control", "retrieval", "prose") if n in train}
    return {
        "leaks": leaks(every),
        "duplicate_sentence_share": {n: duplicate_sentence_share(d) for n, d in generated.items()},
        "gzip_ratio": {n: gzip_ratio(d) for n, d in generated.items()},
        "copy_pressure": copy_pressure(train.get("synthetic", [])),
        "entity_counts": entity_counts(train.get("synthetic", [])),
        "source_shares": source_shares(mixes),
        "arms": arm_difference(mixes),
        "targets": {k: list(v) for k, v in TARGETS.items()},
    }


def measure_value(measures: dict[str, Any], key: str) -> float | None:
    """The value a TARGETS key names, from a `corpus_measures` result."""
    if key == "leaks":
        return measures["leaks"]["total"]
    if key == "copy_pressure":  # n/a for a corpus without repeated entity mentions (own text)
        pressure = measures["copy_pressure"]
        return pressure["share"] if pressure["repeated_mentions"] else None
    if key == "mix_other_source_gap_pp":
        arms = measures.get("arms")
        return arms["max_other_source_gap_pp"] if arms else None
    group, _, source = key.partition(".")
    return measures.get(group, {}).get(source)


def target_met(measures: dict[str, Any], key: str) -> bool | None:
    value = measure_value(measures, key)
    if value is None:
        return None
    op, bound = TARGETS[key]
    return {"==": value == bound, "<=": value <= bound, ">=": value >= bound}[op]
