"""Retrieval documents (seed 004): a context passage, a question, and an answer copied from the
passage; a fixed share are unanswerable and say so explicitly."""

from __future__ import annotations

import random
from typing import Any

from labkit.data.documents import Topics, quota_counts, strip_marks
from labkit.data.world import World

NOT_IN_PASSAGE = "not in the passage"

# (entity list, attribute, question template, answer formatter, facts builder)
_ASPECTS = {
    "cities": [
        ("population", "How many residents does {n} have?", "{v:,}"),
        ("founded", "In which year was {n} founded?", "{v}"),
        ("elevation_m", "At what elevation, in metres, does {n} lie?", "{v:,}"),
        ("industry", "Which trade does {n} live from?", "{v}"),
    ],
    "people": [
        ("born", "In which year was {n} born?", "{v}"),
        ("occupation", "What does {n} do for a living?", "{v}"),
        ("height_cm", "How tall is {n}, in centimetres?", "{v}"),
        ("hobby", "What is {n}'s hobby?", "{v}"),
    ],
    "elements": [
        ("atomic_number", "What is the atomic number of {n}?", "{v}"),
        ("melting_point_k", "At what temperature, in kelvin, does {n} melt?", "{v:,}"),
        ("discovered", "In which year was {n} discovered?", "{v}"),
    ],
    "species": [
        ("lifespan_years", "How many years does the {n} live?", "{v}"),
        ("diet", "What kind of eater is the {n}?", "{v}"),
        ("mass_kg", "How much does an adult {n} weigh, in kilograms?", "{v}"),
    ],
}


def _facts(t: Topics, kind: str, e) -> list:
    return t.facts(kind, e)


def _value_in_passage(passage: str, kind: str, e, attr: str) -> bool:
    """Does the passage state the attribute (numbers are marked; words appear verbatim)?"""
    if f"{kind}.{e.id}.{attr}|" in passage:
        return True
    value = getattr(e, attr)
    return isinstance(value, str) and value in strip_marks(passage)[0]


def make_retrieval_document(world: World, rng: random.Random, answerable: bool) -> dict[str, Any]:
    t = Topics(world, rng)
    for _ in range(100):
        kind = rng.choice(sorted(_ASPECTS))
        e = rng.choice(getattr(world, kind))
        facts = _facts(t, kind, e)
        rng.shuffle(facts)
        own = [f.render(rng) for f in facts[: rng.randint(1, len(facts))]]
        # A sentence about another entity of the same kind makes it a search, not a lookup; what
        # the passage states about the asked entity is decided from its own sentences only.
        other = rng.choice(getattr(world, kind))
        distractor = [_facts(t, kind, other)[0].render(rng)] if other.id != e.id else []
        sentences = own + distractor
        rng.shuffle(sentences)
        passage = " ".join(sentences)
        about_e = " ".join(own)
        aspects = [
            a for a in _ASPECTS[kind] if _value_in_passage(about_e, kind, e, a[0]) == answerable
        ]
        if aspects:
            break
    else:  # pragma: no cover - the world is large enough that this never happens
        raise RuntimeError("could not build a retrieval document")
    attr, template, fmt = rng.choice(aspects)
    question = template.format(n=e.name)
    value = getattr(e, attr)
    clean_passage, spans = strip_marks(passage)
    if answerable:
        answer = fmt.format(v=value)
        if answer not in clean_passage:  # numbers with unit formatting: take the marked surface
            marked = [s for s in spans if s.get("id") == f"{kind}.{e.id}.{attr}"]
            answer = clean_passage[marked[0]["start"] : marked[0]["end"]]
    else:
        answer = NOT_IN_PASSAGE
    prefix = "Passage: "
    text = f"{prefix}{clean_passage}\nQuestion: {question}\nAnswer: {answer}"
    spans = [dict(s, start=s["start"] + len(prefix), end=s["end"] + len(prefix)) for s in spans]
    answer_start = text.rindex("Answer: ") + len("Answer: ")
    evidence = clean_passage.find(answer) + len(prefix) if answerable else -1
    spans.append(
        {
            "start": answer_start,
            "end": answer_start + len(answer),
            "type": "answer",
            "id": "retrieval",
        }
    )
    return {
        "text": text,
        "source": "retrieval",
        "answerable": answerable,
        "question": question,
        "answer": answer,
        "evidence_start": evidence,
        "entity": [kind, e.id, attr],
        "spans": spans,
    }


def generate_retrieval(
    world: World, n: int, seed: int, split: str = "train", unanswerable: float = 0.2
) -> list[dict[str, Any]]:
    """n retrieval documents, exactly round(n * unanswerable) of them unanswerable (quota)."""
    rng = random.Random(f"retrieval-{seed}-{split}")
    counts = quota_counts(n, {"answerable": 1 - unanswerable, "unanswerable": unanswerable})
    flags = [True] * counts["answerable"] + [False] * counts["unanswerable"]
    rng.shuffle(flags)
    docs = []
    for i, answerable in enumerate(flags):
        doc = make_retrieval_document(world, random.Random(f"ret-{seed}-{split}-{i}"), answerable)
        doc["id"] = f"retrieval-{split}-{i:06d}"
        docs.append(doc)
    return docs
