"""The low-density control corpus: the same world's entities and facts as the high-density corpus,
at the same token budget, written the way low-density web prose carries them — a personal post
about one entity, with digressions, hedging, restatement and opinion around one or two facts.

It differs from the dense corpus in density only: the same fact templates, the same kind of
one-off cast (a friend of the writer, named in full several times), real variety rather than
boilerplate. It is the baseline of the study's hypothesis.
"""

from __future__ import annotations

import random
from typing import Any

from labkit.data.cast import make_cast
from labkit.data.documents import Topics, cap, lower_first, mark, strip_marks
from labkit.data.templates import render
from labkit.data.world import HOBBIES, World

SPAN_TYPES = {"cities": "city", "people": "person", "organisations": "organisation"}
SPAN_TYPES |= {"elements": "element", "species": "species", "events": "event"}
LOW_DENSITY_MOVES = ("digression", "opinion", "digression", "opinion")


def mentioned_entities(docs: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(kind, id) of every world entity the dense documents mention, in order of first mention."""
    kinds = {v: k for k, v in SPAN_TYPES.items()}
    seen: dict[tuple[str, int], None] = {}
    for d in docs:
        for s in d.get("spans", []):
            if s["type"] in kinds and str(s["id"]).isdigit():
                seen.setdefault((kinds[s["type"]], int(s["id"])), None)
    return list(seen)


def _page_lines(facts: list[str], slots: dict[str, str], rng: random.Random) -> list[str]:
    """Opener, then each fact hedged and restated among low-density moves, then a closer."""
    r = lambda name, **kw: render(f"control.{name}", slots | kw, rng)  # noqa: E731
    lines = [r("opener")]
    moves = list(LOW_DENSITY_MOVES)
    rng.shuffle(moves)
    for i, fact in enumerate(facts):
        lines.append(r(moves[i % len(moves)]))
        lines.append(r("hedge", fact_lc=lower_first(fact)) if rng.random() < 0.6 else fact)
        lines.append(r(moves[(i + 1) % len(moves)]))
        if rng.random() < 0.7:
            lines.append(r("restate", fact_lc=lower_first(fact)))
    return lines + [r("closer")]


def make_control_page(world: World, rng: random.Random, kind: str, ident: int) -> dict[str, Any]:
    t = Topics(world, rng)
    entity = world.entity(kind, ident)
    facts = [f.render(rng) for f in t.facts(kind, entity)[: rng.randint(1, 2)]]
    friend = make_cast(world, rng, size=1)
    m = friend.members[0]
    place = rng.choice(world.cities)
    the = "the " if kind in ("events", "organisations", "species") else ""  # "the Rotaest fair"
    slots = {
        "entity": the + mark(SPAN_TYPES[kind], ident, entity.name),
        "entity_plain": cap(the + entity.name),
        "a": mark("person", m.id, m.name),
        "place": mark("city", place.id, place.name),
        "hobby": rng.choice(HOBBIES),
    }
    lines = [cap(x) for x in _page_lines(facts, slots, rng)]
    cut = max(2, len(lines) // 2)
    title = cap(render("control.title", slots, rng))
    text, spans = strip_marks(f"{title}\n\n{' '.join(lines[:cut])}\n\n{' '.join(lines[cut:])}")
    return {
        "text": text,
        "source": "control",
        "entity": [kind, ident],
        "spans": spans,
        "cast": friend.entities(),
    }


def generate_control(
    world: World,
    dense_docs: list[dict[str, Any]],
    seed: int,
    split: str = "train",
    oversupply: float = 1.0,
) -> list[dict[str, Any]]:
    """Control pages over the entities the dense documents mention, cycling through them until the
    control corpus reaches `oversupply` x the dense corpus's characters. The build trims it to the
    dense corpus's token count once the tokenizer exists."""
    budget = oversupply * sum(len(d["text"]) for d in dense_docs)
    entities = mentioned_entities(dense_docs)
    if not entities:
        return []
    rng = random.Random(f"control-{seed}-{split}")
    docs, used, i = [], 0, 0
    while used < budget:
        kind, ident = entities[i % len(entities)]
        doc = make_control_page(world, random.Random(f"ctl-{seed}-{split}-{i}"), kind, ident)
        doc["id"] = f"control-{split}-{i:06d}"
        docs.append(doc)
        used += len(doc["text"])
        i += 1
    rng.shuffle(docs)
    return docs
