"""The low-density control corpus: the same world facts as the high-density corpus, at the same
budget, but rendered the way web text carries them: one format (a blog page), boilerplate
navigation and footers, filler, and repetition. It is the baseline of the study's hypothesis."""

from __future__ import annotations

import random
from typing import Any

from labkit.data.documents import Topics, cap, strip_marks
from labkit.data.world import World, _name

FILLER = [
    "This is something a lot of people have been asking about lately.",
    "We think you will find this really interesting.",
    "Keep reading to find out more!",
    "Honestly, it is one of our favourite topics.",
    "There is a lot to say about this, so let us get started.",
    "You might be surprised by what we found.",
    "Make sure to bookmark this page so you can come back later.",
    "We update this article from time to time.",
    "Let us know in the comments what you think.",
    "It is a question that comes up again and again.",
    "Our readers love posts like this one.",
    "Stay tuned for more posts like this.",
    "Without further ado, here is what you need to know.",
    "So, what is the deal with this?",
    "We did some digging so you do not have to.",
    "This post may contain affiliate links.",
    "Scroll down for the full story.",
    "As always, thanks for reading our blog.",
]
NAV = ["Home", "About", "Blog", "Contact", "Shop", "Newsletter", "Archive", "Events", "FAQ"]
FOOTER = [
    "All rights reserved.",
    "Privacy Policy | Terms of Use | Cookie Settings",
    "Follow us on social media for daily updates.",
    "Subscribe to our newsletter and never miss a post.",
    "Share this: Facebook | Twitter | Email",
]


def _entity_facts(t: Topics, kind: str, ident: int):
    e = t.w.entity(kind, ident)
    return {
        "cities": t.city_facts,
        "people": t.person_facts,
        "organisations": t.org_facts,
        "elements": t.element_facts,
        "species": t.species_facts,
        "events": t.event_facts,
    }[kind](e)


def mentioned_entities(docs: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(kind, id) of every entity the high-density documents mention, in order of first mention."""
    kinds = {"city": "cities", "person": "people", "organisation": "organisations"}
    kinds |= {"element": "elements", "species": "species", "event": "events"}
    seen: dict[tuple[str, int], None] = {}
    for d in docs:
        for s in d.get("spans", []):
            if s["type"] in kinds:
                seen.setdefault((kinds[s["type"]], int(s["id"])), None)
    return list(seen)


def make_control_page(world: World, rng: random.Random, kind: str, ident: int) -> dict[str, Any]:
    t = Topics(world, rng)
    site = f"{_name(rng)} {rng.choice(['Facts', 'Daily', 'Hub', 'Zone', 'Corner', 'Insider'])}"
    # The first fact names the entity; later ones may refer back to it ("It melts at ...").
    facts = _entity_facts(t, kind, ident)[: rng.randint(1, 2)]
    entity = world.entity(kind, ident)
    lines = [f"{site} | " + " | ".join(rng.sample(NAV, 4))]
    lines.append(
        rng.choice(
            [
                "You Won't Believe These Facts!",
                "Everything You Need To Know (Updated)",
                "The Ultimate Guide",
            ]
        )
    )
    lines.append(
        f"Posted by {rng.choice(['admin', 'staff writer', 'guest', 'editor'])} | {rng.randint(2, 40)} comments"
    )
    body = [f"Welcome back to {site}!"] + rng.sample(FILLER, rng.randint(2, 4))
    for f in facts:
        sentence = cap(rng.choice(f.sentence))
        body += [sentence] + rng.sample(FILLER, rng.randint(1, 3))
        body.append(f"Again, in case you missed it: {sentence[0].lower()}{sentence[1:]}")
    body += rng.sample(FILLER, 2)
    lines.append(" ".join(body))
    lines.append(
        f"Related posts: Top {rng.randint(5, 15)} facts you did not know | Why everyone is talking about it"
    )
    lines.append(f"Tags: {entity.name}, facts, info, trivia")
    lines.append(f"© {site}. " + " ".join(rng.sample(FOOTER, 2)))
    text, spans = strip_marks("\n".join(lines))
    return {"text": text, "source": "control", "entity": [kind, ident], "spans": spans}


def generate_control(
    world: World,
    dense_docs: list[dict[str, Any]],
    seed: int,
    split: str = "train",
    oversupply: float = 1.0,
) -> list[dict[str, Any]]:
    """Control pages over the entities the dense documents mention, cycling through them until the
    control corpus reaches `oversupply` x the dense corpus's characters. The build trims it to the
    dense corpus's token count once the tokenizer exists (boilerplate tokenizes compactly)."""
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
