"""Record logs: registers that list a dozen or more items on arrival, note a few events, and
check the whole list again at the end, in the same order.

Why a source of its own: the check list repeats the arrival list item for item, so after the first
listing its words can only be predicted by finding the earlier mention and copying what followed
it -- the job of an induction head (Olsson et al. 2022). Natural text holds such copies too, but
so sparsely that a small model on a laptop budget never gets there: seed 004 front-loads
copy-heavy data into the "circuit formation" stage for the same reason. The items are words drawn
from a large vocabulary (English words of Python's own documentation) so that each is rare within
a list: with items spelled from a small alphabet (codes like `QX7-K29F`), every token recurs many
times in one list and "copy what followed it last time" is ambiguous -- in our measurements such
lists taught no copying in 800 steps.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from typing import Any

from labkit.data.world import World

# (register title, item noun and its plural, what can happen to an item)
REGISTERS = [
    ("Shipment log", "parcel", "parcels", ["left the depot", "was held", "was delivered"]),
    ("Archive catalogue", "box", "boxes", ["was opened", "was re-shelved", "went for repair"]),
    ("Inventory ledger", "crate", "crates", ["was counted", "was restocked", "was damaged"]),
    ("Library loan record", "volume", "volumes", ["was lent", "was returned", "was renewed"]),
    ("Sample register", "sample", "samples", ["was frozen", "was sequenced", "passed checks"]),
]


@functools.cache
def item_words(n: int = 1500, skip: int = 150) -> tuple[str, ...]:
    """English words of 4-12 letters from Python's language reference (`pydoc_data.topics`, the
    prose source's text): the most frequent n after the `skip` most frequent (function words)."""
    from pydoc_data.topics import topics

    word = re.compile(r"(?<![\w'])[a-z]{4,12}(?![\w'])")  # whole words, not "doesn" of "doesn't"
    counts = Counter(w for text in topics.values() for w in word.findall(text))
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    return tuple(sorted(ranked[skip : skip + n]))


def make_record_document(world: World, rng: random.Random) -> dict[str, Any]:
    """One register: 12-30 distinct items listed on arrival, one to three later events, then the
    check of the whole list in the order of arrival."""
    title, noun, nouns, events = rng.choice(REGISTERS)
    city = rng.choice(world.cities).name
    items = rng.sample(item_words(), rng.randint(12, 30))
    lines = [
        f"{title}, {city} office, {rng.randint(1950, 2024)}.",
        f"{len(items)} {nouns} arrived, in this order: {', '.join(items)}.",
    ]
    for item in rng.sample(items, rng.randint(1, 3)):
        person = rng.choice(world.people).name
        lines.append(f"The {noun} {item} {rng.choice(events)}, signed {person}.")
    lines.append(f"Checked against the arrival list, in order: {', '.join(items)}.")
    return {"text": "\n".join(lines), "source": "records", "items": items}


def generate_records(world: World, n: int, seed: int, split: str = "train") -> list[dict[str, Any]]:
    """n record documents, each from its own seeded generator (stable under changes of n)."""
    docs = []
    for i in range(n):
        doc = make_record_document(world, random.Random(f"records-{seed}-{split}-{i}"))
        doc["id"] = f"records-{split}-{i:06d}"
        docs.append(doc)
    return docs
