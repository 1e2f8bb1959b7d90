"""High-density documents about the synthetic world, labelled along seed 000's nine dimensions.

Each document is planned from its labels: the domain picks what it talks about, the content focus
picks the plan (explain, instruct, reason, argue, narrate, reflect), the format lays the plan out
(prose, dialogue, steps, Q&A, notes), and the remaining dimensions change sentences (how explicit the
reasoning is, how many facts, hedging and competing readings, present-day framing, tone).

Every number a document states comes from the world or from a computation over it, and each
computation is recorded as a `check` ({op, refs into the world, operands, result}) so tests recompute
it. Entity mentions and numbers carry character spans, which probes use as token targets.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from dataclasses import dataclass, field
from typing import Any

from labkit.data.world import World

REFERENCE_YEAR = 2025  # "now" for contemporary documents
YEAR_ATTRS = {"founded", "born", "discovered", "year"}

DIMENSIONS: dict[str, dict[str, float]] = {
    "content_focus": {
        "factual_explanation": 0.30,
        "procedural": 0.20,
        "reasoning_exposition": 0.20,
        "argumentation": 0.15,
        "creative_narrative": 0.10,
        "metacognitive": 0.05,
    },
    "format": {
        "structured_prose": 0.30,
        "dialogue": 0.15,
        "instructional": 0.15,
        "qa_direct": 0.10,
        "qa_rationale": 0.25,
        "notes": 0.05,
    },
    "domain": {
        "stem": 0.35,
        "humanities_social": 0.25,
        "practical_applied": 0.15,
        "creative_arts": 0.10,
        "abstract_reasoning": 0.15,
    },
    "reasoning_explicitness": {
        "implicit": 0.20,
        "concise": 0.25,
        "detailed_cot": 0.30,
        "self_corrective": 0.10,
        "probabilistic": 0.15,
    },
    "conceptual_complexity": {"basic": 0.30, "intermediate": 0.40, "advanced": 0.30},
    "ambiguity": {"low": 0.40, "moderate": 0.35, "high": 0.25},
    "factual_density": {"low": 0.20, "moderate": 0.40, "high": 0.40},
    "temporal_focus": {"timeless": 0.70, "contemporary": 0.30},
    "style": {
        "neutral": 0.50,
        "positive": 0.15,
        "negative": 0.10,
        "empathetic": 0.15,
        "figurative": 0.10,
    },
}


def quota_counts(n: int, shares: dict[str, float]) -> dict[str, int]:
    """Exact counts for n items (largest remainder), so every share is met to within 1/n."""
    raw = {k: n * p for k, p in shares.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (raw[k] - counts[k], k), reverse=True)[
        : n - sum(counts.values())
    ]:
        counts[k] += 1
    return counts


def quota_labels(n: int, rng: random.Random) -> list[dict[str, str]]:
    """n label dicts whose every dimension meets its target shares exactly (stratified sampling):
    each dimension's quota list is shuffled independently, so dimensions are crossed at random."""
    columns = {}
    for dim, shares in DIMENSIONS.items():
        column = [k for k, c in quota_counts(n, shares).items() for _ in range(c)]
        rng.shuffle(column)
        columns[dim] = column
    return [{dim: columns[dim][i] for dim in DIMENSIONS} for i in range(n)]


# --------------------------------------------------------------------------- spans
# Mentions are written inline as \x01kind|id|attr\x02surface\x03 and become character spans at the end.
def mark(kind: str, ident: Any, surface: Any, attr: str = "") -> str:
    return f"\x01{kind}|{ident}|{attr}\x02{surface}\x03"


_MARK = re.compile(r"\x01([^|]*)\|([^|]*)\|([^\x02]*)\x02([^\x03]*)\x03")


def strip_marks(text: str) -> tuple[str, list[dict[str, Any]]]:
    spans, out, pos, last = [], [], 0, 0
    for m in _MARK.finditer(text):
        out.append(text[last : m.start()])
        pos += m.start() - last
        kind, ident, attr, surface = m.groups()
        spans.append({"start": pos, "end": pos + len(surface), "type": kind, "id": ident})
        if attr:
            spans[-1]["attr"] = attr
        out.append(surface)
        pos += len(surface)
        last = m.end()
    out.append(text[last:])
    return "".join(out), spans


def cap(s: str) -> str:
    """Capitalise the first visible character, skipping any mention marker."""
    i = 0
    while i < len(s) and s[i] == "\x01":
        i = s.index("\x02", i) + 1
    return s[:i] + s[i : i + 1].upper() + s[i + 1 :] if i < len(s) else s


def a(word: str) -> str:
    """'a' or 'an' + word."""
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def fmt_num(x: float | int) -> str:
    if isinstance(x, float) and not x.is_integer():
        return f"{x:,.1f}" if abs(x) >= 1000 else f"{x:g}"
    return f"{int(x):,}"


# --------------------------------------------------------------------------- facts and computations
@dataclass
class Fact:
    sentence: list[str]  # variants
    fragment: str


@dataclass
class Computation:
    question: str
    given: list[str]  # statements of the operands
    steps: list[str]  # explicit working, one step each
    expression: str  # "1517 - 1432 = 85"
    conclusion: str  # sentence stating the result
    answer: str  # short answer (marked)
    check: dict[str, Any]
    wrong: str | None = None  # a plausible wrong expression, for self-corrective documents


@dataclass
class Plan:
    title: str
    subject: str  # short phrase naming the topic
    facts: list[Fact] = field(default_factory=list)
    computations: list[Computation] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)


class Words:
    """Phrase variants, chosen with the document's RNG."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def pick(self, *options: str) -> str:
        return self.rng.choice(options)


def _ref(kind: str, ident: int, attr: str) -> list[Any]:
    return [kind, ident, attr]


class Topics:
    """Builds facts and computations about world entities; every number is marked with its source."""

    def __init__(self, world: World, rng: random.Random):
        self.w, self.rng, self.say = world, rng, Words(rng)

    # ---- mentions
    def city(self, c) -> str:
        return mark("city", c.id, c.name)

    def person(self, p) -> str:
        return mark("person", p.id, p.name)

    def org(self, o) -> str:
        return mark("organisation", o.id, o.name)

    def element(self, e) -> str:
        return mark("element", e.id, e.name)

    def species(self, s) -> str:
        return mark("species", s.id, s.name)

    def event(self, e) -> str:
        return mark("event", e.id, e.name)

    def num(self, kind: str, ident: int, attr: str, value: Any, surface: str | None = None) -> str:
        if surface is None:
            surface = str(value) if attr in YEAR_ATTRS else fmt_num(value)
        return mark("number", f"{kind}.{ident}.{attr}", surface, attr=str(value))

    def result(self, value: Any, surface: str | None = None) -> str:
        return mark("number", "result", surface or fmt_num(value), attr=str(value))

    # ---- facts per entity kind
    def city_facts(self, c) -> list[Fact]:
        country = self.w.countries[c.country].name
        s = self.say
        return [
            Fact(
                [
                    f"{self.city(c)} lies in {country} and has {self.num('cities', c.id, 'population', c.population)} residents.",
                    f"Some {self.num('cities', c.id, 'population', c.population)} people live in {self.city(c)}, a city of {country}.",
                ],
                f"{self.city(c)} ({country}): pop. {self.num('cities', c.id, 'population', c.population)}",
            ),
            Fact(
                [
                    f"{self.city(c)} was founded in {self.num('cities', c.id, 'founded', c.founded)}.",
                    f"The founding of {self.city(c)} dates to {self.num('cities', c.id, 'founded', c.founded)}.",
                ],
                f"founded {self.num('cities', c.id, 'founded', c.founded)}",
            ),
            Fact(
                [
                    f"It covers {self.num('cities', c.id, 'area_km2', c.area_km2)} square kilometres at an elevation of {self.num('cities', c.id, 'elevation_m', c.elevation_m)} metres.",
                    f"{self.city(c)} {s.pick('spans', 'occupies', 'covers')} {self.num('cities', c.id, 'area_km2', c.area_km2)} km² and sits {self.num('cities', c.id, 'elevation_m', c.elevation_m)} m above sea level.",
                ],
                f"area {self.num('cities', c.id, 'area_km2', c.area_km2)} km²; elev. {self.num('cities', c.id, 'elevation_m', c.elevation_m)} m",
            ),
            Fact(
                [
                    f"Visitors to {self.city(c)} remember its {c.landmark}; the town lives largely from {c.industry}.",
                    f"{self.city(c)} is known for {c.industry} and for {a(c.landmark)} near its centre.",
                    f"The {c.landmark} of {self.city(c)} overlooks workshops given over to {c.industry}.",
                    f"Its economy rests on {c.industry}, and its best-known sight is {a(c.landmark)}.",
                ],
                f"{c.industry}; {c.landmark}",
            ),
        ]

    def person_facts(self, p) -> list[Fact]:
        city, org = self.w.cities[p.city], self.w.organisations[p.employer]
        return [
            Fact(
                [
                    f"{self.person(p)} is {a(p.occupation)} born in {self.num('people', p.id, 'born', p.born)}.",
                    f"Born in {self.num('people', p.id, 'born', p.born)}, {self.person(p)} works as {a(p.occupation)}.",
                ],
                f"{self.person(p)}: {p.occupation}, b. {self.num('people', p.id, 'born', p.born)}",
            ),
            Fact(
                [
                    f"{self.person(p)} lives in {self.city(city)} and works for the {self.org(org)}.",
                    f"The {self.org(org)} employs {self.person(p)}, who makes a home in {self.city(city)}.",
                ],
                f"home {self.city(city)}; employer {self.org(org)}",
            ),
            Fact(
                [
                    f"{self.person(p)} stands {self.num('people', p.id, 'height_cm', p.height_cm)} cm tall and spends free evenings on {p.hobby}.",
                    f"At {self.num('people', p.id, 'height_cm', p.height_cm)} centimetres, {self.person(p)} is easy to spot at {p.hobby} meetings.",
                    f"Friends know {self.person(p)} ({self.num('people', p.id, 'height_cm', p.height_cm)} cm) for a devotion to {p.hobby}.",
                ],
                f"height {self.num('people', p.id, 'height_cm', p.height_cm)} cm; hobby {p.hobby}",
            ),
        ]

    def org_facts(self, o) -> list[Fact]:
        city = self.w.cities[o.city]
        return [
            Fact(
                [
                    f"The {self.org(o)} was established in {self.city(city)} in {self.num('organisations', o.id, 'founded', o.founded)}.",
                    f"Founded in {self.num('organisations', o.id, 'founded', o.founded)}, the {self.org(o)} is based in {self.city(city)}.",
                ],
                f"{self.org(o)}: est. {self.num('organisations', o.id, 'founded', o.founded)}, {self.city(city)}",
            ),
            Fact(
                [
                    f"The {self.org(o)} counts {self.num('organisations', o.id, 'members', o.members)} members, most of them working on {o.field}.",
                    f"Its {self.num('organisations', o.id, 'members', o.members)} members concentrate on {o.field}.",
                    f"With {self.num('organisations', o.id, 'members', o.members)} members, the {self.org(o)} is a centre of {o.field}.",
                    f"Research at the {self.org(o)} focuses on {o.field}; membership stands at {self.num('organisations', o.id, 'members', o.members)}.",
                ],
                f"members {self.num('organisations', o.id, 'members', o.members)}; field {o.field}",
            ),
        ]

    def element_facts(self, e) -> list[Fact]:
        who = self.w.people[e.discoverer]
        return [
            Fact(
                [
                    f"{self.element(e)} (symbol {e.symbol}) has atomic number {self.num('elements', e.id, 'atomic_number', e.atomic_number)}.",
                    f"The element {self.element(e)}, written {e.symbol}, sits at atomic number {self.num('elements', e.id, 'atomic_number', e.atomic_number)}.",
                ],
                f"{self.element(e)} ({e.symbol}), Z={self.num('elements', e.id, 'atomic_number', e.atomic_number)}",
            ),
            Fact(
                [
                    f"It melts at {self.num('elements', e.id, 'melting_point_k', e.melting_point_k)} K and has a density of {self.num('elements', e.id, 'density', e.density)} g/cm³.",
                    f"{self.element(e)} has a melting point of {self.num('elements', e.id, 'melting_point_k', e.melting_point_k)} kelvin; its density is {self.num('elements', e.id, 'density', e.density)} grams per cubic centimetre.",
                ],
                f"m.p. {self.num('elements', e.id, 'melting_point_k', e.melting_point_k)} K; ρ {self.num('elements', e.id, 'density', e.density)} g/cm³",
            ),
            Fact(
                [
                    f"{self.person(who)} discovered {self.element(e)} in {self.num('elements', e.id, 'discovered', e.discovered)}, noting its {e.colour} sheen.",
                    f"It was first isolated in {self.num('elements', e.id, 'discovered', e.discovered)} by {self.person(who)}, who described it as {e.colour}.",
                    f"In {self.num('elements', e.id, 'discovered', e.discovered)}, {self.person(who)} obtained the first {e.colour} sample of {self.element(e)}.",
                ],
                f"disc. {self.num('elements', e.id, 'discovered', e.discovered)} ({self.person(who)})",
            ),
        ]

    def species_facts(self, s) -> list[Fact]:
        region = self.w.cities[s.region]
        return [
            Fact(
                [
                    f"The {self.species(s)} is {a(s.cls)} of the {s.habitat} near {self.city(region)}.",
                    f"Near {self.city(region)}, the {s.habitat} are home to the {self.species(s)}, {a(s.cls)}.",
                ],
                f"{self.species(s)}: {s.cls}, {s.habitat} ({self.city(region)})",
            ),
            Fact(
                [
                    f"An adult {self.species(s)} weighs {self.num('species', s.id, 'mass_kg', s.mass_kg)} kg and lives about {self.num('species', s.id, 'lifespan_years', s.lifespan_years)} years.",
                    f"Adults reach {self.num('species', s.id, 'mass_kg', s.mass_kg)} kilograms, with a lifespan near {self.num('species', s.id, 'lifespan_years', s.lifespan_years)} years.",
                ],
                f"mass {self.num('species', s.id, 'mass_kg', s.mass_kg)} kg; lifespan {self.num('species', s.id, 'lifespan_years', s.lifespan_years)} y",
            ),
            Fact(
                [
                    f"The {self.species(s)} is {a(s.diet)} with {s.colour} markings.",
                    f"By diet, the {self.species(s)} is {a(s.diet)}; its coat or shell is {s.colour}.",
                    f"Observers describe the {self.species(s)} as {a(s.colour)} {s.diet}.",
                ],
                f"diet: {s.diet}; colour {s.colour}",
            ),
        ]

    def event_facts(self, ev) -> list[Fact]:
        city = self.w.cities[ev.city]
        d = dt.date.fromisoformat(ev.date)
        date = self.num("events", ev.id, "date", ev.date, d.strftime("%B %-d, %Y"))
        return [
            Fact(
                [
                    f"The {self.event(ev)} took place in {self.city(city)} on {date}.",
                    f"On {date}, {self.city(city)} hosted the {self.event(ev)}.",
                ],
                f"{self.event(ev)}: {date}, {self.city(city)}",
            ),
            Fact(
                [
                    f"About {self.num('events', ev.id, 'attendance', ev.attendance)} people attended it.",
                    f"The {self.event(ev)} drew {self.num('events', ev.id, 'attendance', ev.attendance)} attendees.",
                ],
                f"attendance {self.num('events', ev.id, 'attendance', ev.attendance)}",
            ),
        ]

    # ---- computations
    def difference(
        self, a_name, a_ref, a_val, b_name, b_ref, b_val, unit: str, what: str
    ) -> Computation:
        """a - b for two world values (a >= b)."""
        if a_val < b_val:
            a_name, a_ref, a_val, b_name, b_ref, b_val = b_name, b_ref, b_val, a_name, a_ref, a_val
        diff = a_val - b_val
        a_s, b_s = self.num(*a_ref, a_val), self.num(*b_ref, b_val)
        res = self.result(diff)
        return Computation(
            question=self.say.pick(
                f"How many {unit} separate {what}?",
                f"What is the gap, in {unit}, between {what}?",
                f"How far apart, in {unit}, are {what}?",
                f"By how many {unit} do {what} differ?",
            ),
            given=[f"{a_name}: {a_s}", f"{b_name}: {b_s}"],
            steps=[
                self.say.pick(
                    f"take {a_name}, {a_s}",
                    f"note {a_name}: {a_s}",
                    f"write down {a_s} for {a_name}",
                ),
                self.say.pick(
                    f"take {b_name}, {b_s}",
                    f"note {b_name}: {b_s}",
                    f"write down {b_s} for {b_name}",
                ),
                self.say.pick(
                    f"subtract: {a_s} − {b_s} = {res}",
                    f"the difference is {a_s} − {b_s} = {res}",
                    f"{a_s} minus {b_s} gives {res}",
                ),
            ],
            expression=f"{a_s} − {b_s} = {res}",
            conclusion=self.say.pick(
                f"{cap(what)} are {res} {unit} apart.",
                f"The gap between {what} is {res} {unit}.",
                f"{cap(what)} differ by {res} {unit}.",
                f"That leaves {res} {unit} between {what}.",
            ),
            answer=f"{res} {unit}",
            check={"op": "sub", "refs": [a_ref, b_ref], "result": diff},
            wrong=f"{a_s} − {b_s} = {fmt_num(diff + self.rng.choice([-10, 10, 1, -1, 100]))}",
        )

    def compare(
        self, items: list[tuple[str, list, Any]], attr_phrase: str, more: str
    ) -> Computation:
        """Which of the items has the largest value."""
        best = max(items, key=lambda t: t[2])
        given = [f"{name}: {self.num(*ref, val)}" for name, ref, val in items]
        ranked = sorted(items, key=lambda t: t[2], reverse=True)
        ordered = self.num(*ranked[0][1], ranked[0][2])
        for (_, _, prev), (_, ref, val) in zip(ranked, ranked[1:], strict=False):
            ordered += f" {'>' if prev > val else '='} {self.num(*ref, val)}"
        return Computation(
            question=self.say.pick(
                f"Which has {more} {attr_phrase}?",
                f"Among {', '.join(n for n, _, _ in items)}, which has {more} {attr_phrase}?",
                f"Whose {attr_phrase} is {more.replace('the ', '')}?",
            ),
            given=given,
            steps=[f"list the {attr_phrase}: " + "; ".join(given), f"order them: {ordered}"],
            expression=ordered,
            conclusion=cap(f"{best[0]} has {more} {attr_phrase}."),
            answer=mark("answer", "compare", best[0]),
            check={"op": "argmax", "refs": [ref for _, ref, _ in items], "result": best[1]},
        )

    def convert(
        self,
        name: str,
        ref: list,
        value: float,
        unit: str,
        to: str,
        factor: float,
        offset: float,
        digits: int,
    ) -> Computation:
        out = round(value * factor + offset, digits)
        v_s, r_s = self.num(*ref, value), self.result(out, f"{out:,.{digits}f}")
        op = f"× {factor:g}" if offset == 0 else f"{'+' if offset > 0 else '−'} {abs(offset):g}"
        return Computation(
            question=self.say.pick(
                f"What is {name} in {to}?",
                f"How much is {name}, expressed in {to}?",
                f"Convert {name} to {to}.",
            ),
            given=[f"{name}: {v_s} {unit}"],
            steps=[
                f"start from {v_s} {unit}",
                f"apply the conversion: {v_s} {op}",
                f"round to get {r_s} {to}",
            ],
            expression=f"{v_s} {unit} {op} = {r_s} {to}",
            conclusion=self.say.pick(
                f"{cap(name)} is {r_s} {to}.",
                f"In {to}, {name} comes to {r_s}.",
                f"Expressed in {to}, {name} is {r_s}.",
            ),
            answer=f"{r_s} {to}",
            check={
                "op": "convert",
                "refs": [ref],
                "factor": factor,
                "offset": offset,
                "digits": digits,
                "result": out,
            },
            wrong=f"{v_s} {unit} {op} = {fmt_num(round(out * 10, digits))} {to}",
        )

    def ratio(self, name: str, a_ref, a_val, b_ref, b_val, unit: str) -> Computation:
        out = round(a_val / b_val, 1)
        a_s, b_s, r_s = (
            self.num(*a_ref, a_val),
            self.num(*b_ref, b_val),
            self.result(out, f"{out:,.1f}"),
        )
        return Computation(
            question=self.say.pick(
                f"What is {name}?", f"Work out {name}.", f"How large is {name}?"
            ),
            given=[a_s, b_s],
            steps=[f"divide {a_s} by {b_s}", f"round to one decimal: {r_s}"],
            expression=f"{a_s} ÷ {b_s} ≈ {r_s}",
            conclusion=f"{cap(name)} is about {r_s} {unit}.",
            answer=f"{r_s} {unit}",
            check={"op": "div", "refs": [a_ref, b_ref], "digits": 1, "result": out},
            wrong=f"{a_s} ÷ {b_s} ≈ {fmt_num(round(out * 10, 1))}",
        )

    def product(
        self, name: str, ref, val, given_val: int, given_phrase: str, unit: str
    ) -> Computation:
        out = val * given_val
        v_s, r_s = self.num(*ref, val), self.result(out)
        return Computation(
            question=f"What is {name}?",
            given=[v_s, f"{given_val} {given_phrase}"],
            steps=[f"take {v_s}", f"multiply by {given_val}", f"{v_s} × {given_val} = {r_s}"],
            expression=f"{v_s} × {given_val} = {r_s}",
            conclusion=f"{cap(name)} comes to {r_s} {unit}.",
            answer=f"{r_s} {unit}",
            check={"op": "mul", "refs": [ref], "constant": given_val, "result": out},
            wrong=f"{v_s} × {given_val} = {fmt_num(out + given_val)}",
        )

    def days_between(self, e1, e2) -> Computation:
        a, b = sorted([e1, e2], key=lambda e: e.date)
        days = (dt.date.fromisoformat(b.date) - dt.date.fromisoformat(a.date)).days
        da = self.num("events", a.id, "date", a.date, a.date)
        db = self.num("events", b.id, "date", b.date, b.date)
        res = self.result(days)
        return Computation(
            question=self.say.pick(
                f"How many days passed between the {self.event(a)} and the {self.event(b)}?",
                f"How long, in days, was it from the {self.event(a)} to the {self.event(b)}?",
                f"Count the days from the {self.event(a)} to the {self.event(b)}.",
            ),
            given=[f"{self.event(a)}: {da}", f"{self.event(b)}: {db}"],
            steps=[
                f"the earlier date is {da}",
                f"the later date is {db}",
                f"count the days between them: {res}",
            ],
            expression=f"{db} − {da} = {res} days",
            conclusion=f"{res} days separate the {self.event(a)} from the {self.event(b)}.",
            answer=f"{res} days",
            check={
                "op": "days",
                "refs": [["events", a.id, "date"], ["events", b.id, "date"]],
                "result": days,
            },
            wrong=f"{db} − {da} = {fmt_num(days + 365)} days",
        )

    def since(self, name: str, ref, year: int) -> Computation:
        """Years from a world year to REFERENCE_YEAR (contemporary documents)."""
        out = REFERENCE_YEAR - year
        y, r = self.num(*ref, year), self.result(out)
        return Computation(
            question=f"As of {REFERENCE_YEAR}, how many years ago was {name}?",
            given=[f"{name}: {y}", f"the current year: {REFERENCE_YEAR}"],
            steps=[
                f"the year now is {REFERENCE_YEAR}",
                f"{name} was in {y}",
                f"{REFERENCE_YEAR} − {y} = {r}",
            ],
            expression=f"{REFERENCE_YEAR} − {y} = {r}",
            conclusion=f"As of {REFERENCE_YEAR}, {name} was {r} years ago.",
            answer=f"{r} years",
            check={"op": "since", "refs": [ref], "now": REFERENCE_YEAR, "result": out},
            wrong=f"{REFERENCE_YEAR} − {y} = {fmt_num(out - 10)}",
        )

    def probability(self, org) -> Computation:
        staff = [p for p in self.w.people if p.employer == org.id]
        occupation = self.rng.choice([p.occupation for p in staff]) if staff else "chemist"
        k, n = sum(p.occupation == occupation for p in staff), len(staff)
        n = max(n, 1)
        pct = round(100 * k / n)
        res = self.result(pct, f"{pct}%")
        return Computation(
            question=f"If one listed worker of the {self.org(org)} is picked at random, how likely is it to be a {occupation}?",
            given=[
                f"the register lists {self.result(n)} workers at the {self.org(org)}",
                f"{self.result(k)} of them are {occupation}s",
            ],
            steps=[
                f"count the {occupation}s: {k}",
                f"count everyone: {n}",
                f"the odds are {k} in {n}, about {res}",
            ],
            expression=f"{k} / {n} ≈ {res}",
            conclusion=f"The chance that a randomly picked worker of the {self.org(org)} is {a(occupation)} is {k} in {n}, roughly {res}.",
            answer=f"about {res}",
            check={
                "op": "prob",
                "org": org.id,
                "occupation": occupation,
                "k": k,
                "n": n,
                "result": pct,
            },
            wrong=f"{k} / {n} ≈ {min(100, pct + 20)}%",
        )

    def syllogism(self, e) -> Computation:
        threshold = self.rng.choice([1850, 1900, 1950, 2000])
        old = e.discovered < threshold
        cls = "early element" if old else "modern element"
        rule = (
            f"every element discovered before {threshold} is called an early element"
            if old
            else f"every element discovered in or after {threshold} is called a modern element"
        )
        y = self.num("elements", e.id, "discovered", e.discovered)
        return Computation(
            question=f"Is {self.element(e)} an {cls}?",
            given=[rule, f"{self.element(e)} was discovered in {y}"],
            steps=[
                f"premise: {rule}",
                f"premise: {self.element(e)} was discovered in {y}",
                f"{y} is {'before' if old else 'not before'} {threshold}, so the rule applies",
            ],
            expression=f"{y} {'<' if old else '≥'} {threshold}",
            conclusion=f"Therefore {self.element(e)} is {'an early' if old else 'a modern'} element.",
            answer=mark("answer", "syllogism", f"yes, {'an early' if old else 'a modern'} element"),
            check={
                "op": "threshold",
                "refs": [["elements", e.id, "discovered"]],
                "threshold": threshold,
                "result": old,
            },
        )


def _competing(t: Topics, kind: str) -> tuple[str, list[str]] | None:
    """Two readings of "bigger"/"older" that disagree: the high-ambiguity device."""
    pairs = {
        "cities": ("population", "area_km2", "larger", "residents", "km²", t.city),
        "elements": ("density", "melting_point_k", "more robust", "g/cm³", "K", t.element),
        "species": ("mass_kg", "lifespan_years", "bigger", "kg", "years", t.species),
        "organisations": ("members", "founded", "more established", "members", "", t.org),
    }
    readings = {"population": "head count", "area_km2": "land area", "density": "density",
                "melting_point_k": "heat resistance", "mass_kg": "body mass",
                "lifespan_years": "lifespan", "members": "membership", "founded": "age"}  # fmt: skip
    if kind not in pairs:
        return None
    a1, a2, word, u1, u2, name = pairs[kind]
    items = list(getattr(t.w, kind))
    for _ in range(50):
        x, y = t.rng.sample(items, 2)
        v = lambda e, a: getattr(e, a)  # noqa: E731
        first = v(x, a1) > v(y, a1)
        second = v(x, a2) > v(y, a2) if a2 != "founded" else v(x, a2) < v(y, a2)
        if first != second and v(x, a1) != v(y, a1) and v(x, a2) != v(y, a2):
            w1 = x if first else y
            w2 = x if second else y
            text = (
                f"Which is the {word}, {name(x)} or {name(y)}? The answer depends on the reading. "
                f"By {readings[a1]}, {name(w1)} wins ({t.num(kind, x.id, a1, v(x, a1))} vs "
                f"{t.num(kind, y.id, a1, v(y, a1))} {u1}); by {readings[a2]}, {name(w2)} does "
                f"({t.num(kind, x.id, a2, v(x, a2))} vs {t.num(kind, y.id, a2, v(y, a2))}"
                f"{' ' + u2 if u2 else ', founding years'})."
            )
            check = {
                "op": "competing",
                "kind": kind,
                "ids": [x.id, y.id],
                "attrs": [a1, a2],
                "result": [w1.id, w2.id],
            }
            return text, [check]  # type: ignore[return-value]
    return None


# --------------------------------------------------------------------------- planning
STYLE_LINES = {
    "neutral": [],
    "positive": [
        "It is an encouraging picture.",
        "Remarkably, the figures line up neatly.",
        "This is one of the more impressive records in the archive.",
        "The result is a pleasing one.",
    ],
    "negative": [
        "Unfortunately, the record here is thin and the picture is unflattering.",
        "Critics call this a disappointing showing.",
        "Frankly, the numbers fall short of what was promised.",
        "Sadly, little else about it stands out.",
    ],
    "empathetic": [
        "If this feels like a lot of numbers, that is okay; take it one step at a time.",
        "I remember finding this confusing at first, so be patient with yourself.",
        "You are not alone if the dates blur together; many readers feel the same.",
        "It is natural to double-check this kind of thing, and worth doing.",
    ],
    "figurative": [
        "The figures fall into place like stones in a riverbed.",
        "Numbers here are lanterns along a dark road.",
        "The archive is a tangled orchard, and this fact is one ripe fruit.",
        "Each date is a footprint left in wet clay.",
    ],
}
HEDGES = [
    "By most accounts, ",
    "Records suggest that ",
    "Reportedly, ",
    "As far as the archive shows, ",
]
CONTEMPORARY = [
    f"As of {REFERENCE_YEAR}, the records below are current.",
    f"This summary reflects the situation in {REFERENCE_YEAR}.",
    f"Today, in {REFERENCE_YEAR}, these figures are still quoted.",
]


def _people_kind(t: Topics, occupations: tuple[str, ...] = ()) -> Any:
    pool = [p for p in t.w.people if not occupations or p.occupation in occupations]
    return t.rng.choice(pool or t.w.people)


def plan_document(world: World, labels: dict[str, str], rng: random.Random) -> Plan:
    """Choose what a document says: its facts and computations, by domain and complexity."""
    t = Topics(world, rng)
    n_comp = {"basic": 1, "intermediate": 2, "advanced": 3}[labels["conceptual_complexity"]]
    domain = labels["domain"]
    facts: list[Fact] = []
    comps: list[Computation] = []
    pick = rng.sample

    if domain == "stem":
        if rng.random() < 0.5:
            els = pick(world.elements, 3)
            e = els[0]
            title, subject, competing_kind = f"The element {e.name}", t.element(e), "elements"
            for x in els:
                facts += t.element_facts(x)
            pool = [
                lambda: t.convert(
                    f"the melting point of {t.element(e)}",
                    ["elements", e.id, "melting_point_k"],
                    e.melting_point_k,
                    "K",
                    "°C",
                    1,
                    -273.15,
                    2,
                ),
                lambda: t.compare(
                    [(t.element(x), ["elements", x.id, "density"], x.density) for x in els],
                    "density",
                    "the highest",
                ),
                lambda: t.difference(
                    t.element(els[0]),
                    ["elements", els[0].id, "atomic_number"],
                    els[0].atomic_number,
                    t.element(els[1]),
                    ["elements", els[1].id, "atomic_number"],
                    els[1].atomic_number,
                    "places",
                    f"the atomic numbers of {t.element(els[0])} and {t.element(els[1])}",
                ),
                lambda: t.syllogism(e),
            ]
            if (
                labels["conceptual_complexity"] == "advanced"
            ):  # interdisciplinary: chemistry x biography
                who = world.people[e.discoverer]
                facts += t.person_facts(who)[:1]
                pool.insert(
                    0,
                    lambda: t.difference(
                        f"the discovery of {t.element(e)}",
                        ["elements", e.id, "discovered"],
                        e.discovered,
                        f"the birth of {t.person(who)}",
                        ["people", who.id, "born"],
                        who.born,
                        "years",
                        f"the birth of {t.person(who)} and the discovery of {t.element(e)}",
                    ),
                )
        else:
            sps = pick(world.species, 3)
            s = sps[0]
            title, subject, competing_kind = f"The {s.name}", t.species(s), "species"
            for x in sps:
                facts += t.species_facts(x)
            pool = [
                lambda: t.convert(
                    f"the mass of an adult {t.species(s)}",
                    ["species", s.id, "mass_kg"],
                    s.mass_kg,
                    "kg",
                    "lb",
                    2.20462,
                    0,
                    1,
                ),
                lambda: t.compare(
                    [
                        (t.species(x), ["species", x.id, "lifespan_years"], x.lifespan_years)
                        for x in sps
                    ],
                    "lifespan",
                    "the longest",
                ),
                lambda: t.ratio(
                    f"the mass per year of life of the {t.species(s)}",
                    ["species", s.id, "mass_kg"],
                    s.mass_kg,
                    ["species", s.id, "lifespan_years"],
                    s.lifespan_years,
                    "kg per year",
                ),
                lambda: t.difference(
                    t.species(sps[0]),
                    ["species", sps[0].id, "lifespan_years"],
                    sps[0].lifespan_years,
                    t.species(sps[1]),
                    ["species", sps[1].id, "lifespan_years"],
                    sps[1].lifespan_years,
                    "years",
                    f"the lifespans of the {t.species(sps[0])} and the {t.species(sps[1])}",
                ),
            ]
            if (
                labels["conceptual_complexity"] == "advanced"
            ):  # interdisciplinary: biology x geography
                c = world.cities[s.region]
                facts += t.city_facts(c)[:1]
                pool.insert(
                    0,
                    lambda: t.ratio(
                        f"the number of residents of {t.city(c)} per kilogram of {t.species(s)}",
                        ["cities", c.id, "population"],
                        c.population,
                        ["species", s.id, "mass_kg"],
                        s.mass_kg,
                        "residents per kg",
                    ),
                )
        year_ref = (
            (
                ["elements", els[0].id, "discovered"],
                els[0].discovered,
                f"the discovery of {t.element(els[0])}",
            )
            if competing_kind == "elements"
            else None
        )
    elif domain in ("humanities_social", "creative_arts"):
        if domain == "creative_arts":
            p = _people_kind(t, ("composer", "architect", "teacher"))
            evs = pick(
                [e for e in world.events if e.kind in ("festival", "fair", "congress")]
                or world.events,
                2,
            )
        else:
            p = _people_kind(t)
            evs = pick(world.events, 2)
        orgs = [world.organisations[p.employer]] + pick(world.organisations, 1)
        if orgs[1].id == orgs[0].id:
            orgs[1] = world.organisations[(orgs[0].id + 1) % len(world.organisations)]
        title = (
            f"{p.name} and the {evs[0].name}"
            if domain == "creative_arts"
            else f"The {orgs[0].name}"
        )
        subject, competing_kind = (
            (t.person(p) if domain == "creative_arts" else t.org(orgs[0])),
            "organisations",
        )
        facts += t.person_facts(p) + t.org_facts(orgs[0]) + t.org_facts(orgs[1])
        facts += t.event_facts(evs[0]) + t.event_facts(evs[1])
        ev_year = int(evs[0].date[:4])
        pool = [
            lambda: t.difference(
                f"the founding of the {t.org(orgs[0])}",
                ["organisations", orgs[0].id, "founded"],
                orgs[0].founded,
                f"the founding of the {t.org(orgs[1])}",
                ["organisations", orgs[1].id, "founded"],
                orgs[1].founded,
                "years",
                f"the foundings of the {t.org(orgs[0])} and the {t.org(orgs[1])}",
            ),
            lambda: t.days_between(evs[0], evs[1]),
            lambda: t.compare(
                [(t.event(e), ["events", e.id, "attendance"], e.attendance) for e in evs],
                "attendance",
                "the larger",
            ),
            lambda: t.compare(
                [(t.org(o), ["organisations", o.id, "members"], o.members) for o in orgs],
                "membership",
                "the larger",
            ),
        ]
        if ev_year > p.born:
            pool.insert(
                0 if domain == "creative_arts" else 2,
                lambda: t.difference(
                    f"the year of the {t.event(evs[0])}",
                    ["events", evs[0].id, "year"],
                    ev_year,
                    f"the birth of {t.person(p)}",
                    ["people", p.id, "born"],
                    p.born,
                    "years",
                    f"the birth of {t.person(p)} and the {t.event(evs[0])}",
                ),
            )
        year_ref = (
            ["organisations", orgs[0].id, "founded"],
            orgs[0].founded,
            f"the founding of the {t.org(orgs[0])}",
        )
    elif domain == "practical_applied":
        cs = pick(world.cities, 2)
        c, o = cs[0], world.organisations[rng.randrange(len(world.organisations))]
        title, subject, competing_kind = f"Practical figures for {c.name}", t.city(c), "cities"
        facts += t.city_facts(cs[0]) + t.city_facts(cs[1]) + t.org_facts(o)
        fee = rng.choice([3, 5, 8, 12, 15, 20, 25])
        pool = [
            lambda: t.ratio(
                f"the population density of {t.city(c)}",
                ["cities", c.id, "population"],
                c.population,
                ["cities", c.id, "area_km2"],
                c.area_km2,
                "residents per km²",
            ),
            lambda: t.product(
                f"the yearly dues collected by the {t.org(o)} at {fee} crowns a member",
                ["organisations", o.id, "members"],
                o.members,
                fee,
                "crowns per member",
                "crowns",
            ),
            lambda: t.convert(
                f"the area of {t.city(c)}",
                ["cities", c.id, "area_km2"],
                c.area_km2,
                "km²",
                "hectares",
                100,
                0,
                0,
            ),
            lambda: t.convert(
                f"the elevation of {t.city(c)}",
                ["cities", c.id, "elevation_m"],
                c.elevation_m,
                "m",
                "feet",
                3.28084,
                0,
                0,
            ),
            lambda: t.compare(
                [(t.city(x), ["cities", x.id, "population"], x.population) for x in cs],
                "population",
                "the larger",
            ),
        ]
        year_ref = (["cities", c.id, "founded"], c.founded, f"the founding of {t.city(c)}")
    else:  # abstract_reasoning
        els = pick(world.elements, 2)
        o = world.organisations[rng.randrange(len(world.organisations))]
        title, subject, competing_kind = "A short exercise in reasoning", "the problem", "elements"
        facts += t.element_facts(els[0]) + t.element_facts(els[1]) + t.org_facts(o)
        pool = [
            lambda: t.syllogism(els[0]),
            lambda: t.compare(
                [
                    (t.element(x), ["elements", x.id, "melting_point_k"], x.melting_point_k)
                    for x in els
                ],
                "melting point",
                "the higher",
            ),
            lambda: t.probability(o),
            lambda: t.syllogism(els[1]),
        ]
        year_ref = (
            ["elements", els[0].id, "discovered"],
            els[0].discovered,
            f"the discovery of {t.element(els[0])}",
        )

    head = pool[:1] if labels["conceptual_complexity"] == "advanced" and domain == "stem" else []
    rest = pool[len(head) :]
    rng.shuffle(rest)
    for make in (head + rest)[:n_comp]:
        comps.append(make())
    if labels["reasoning_explicitness"] == "probabilistic" and not any(
        c.check["op"] == "prob" for c in comps
    ):
        org = rng.choice(world.organisations)
        comps.append(t.probability(org))
        facts += t.org_facts(org)[:1]
    if labels["temporal_focus"] == "contemporary" and year_ref is not None:
        ref, year, name = year_ref
        comps.append(t.since(name, ref, year))

    n_facts = {"low": 2, "moderate": 4, "high": 7}[labels["factual_density"]]
    plan = Plan(title=title, subject=subject, facts=facts[:n_facts], computations=comps)
    plan.checks = [c.check for c in comps]
    plan.competing = _competing(t, competing_kind) if labels["ambiguity"] == "high" else None  # type: ignore[attr-defined]
    return plan


# --------------------------------------------------------------------------- rendering
def _reason(c: Computation, mode: str, w: Words) -> list[str]:
    """A computation as sentences, as explicit as the label says."""
    if mode == "implicit":
        return [c.conclusion]
    if mode in ("concise", "probabilistic"):
        return [
            f"{w.pick('Since', 'Because', 'Given that')} {c.expression}, {c.conclusion[0].lower()}{c.conclusion[1:]}"
        ]
    if mode == "detailed_cot":
        order = ["First", "Next", "Then", "After that"]
        lines = [f"{order[min(i, 3)]}, {s}." for i, s in enumerate(c.steps)]
        return lines + [
            f"{w.pick('So', 'Therefore', 'Hence')}, {c.conclusion[0].lower()}{c.conclusion[1:]}"
        ]
    # self_corrective: a wrong step, flagged and corrected
    if c.wrong:
        return [
            f"{w.pick('At first I wrote', 'A first attempt gives', 'A quick pass suggests')} {c.wrong}.",
            f"{w.pick('Wait, that is wrong', 'That is a mistake', 'No, that does not check out')}: {c.expression}.",
            c.conclusion,
        ]
    return [
        f"{w.pick('At first glance', 'On a quick read')} the answer seems to go the other way.",
        f"{w.pick('Checking the numbers corrects that', 'Looking again fixes the error')}: {c.expression}.",
        c.conclusion,
    ]


CONNECTIVES = ["Moreover, ", "In addition, ", "Also, ", "Notably, ", "Meanwhile, ", "Besides, ",
               "On top of that, ", "Separately, ", "For context, ", "Worth adding: "]  # fmt: skip


def _lower_first(s: str) -> str:
    return s if s.startswith("\x01") else s[0].lower() + s[1:]


def _fact_sentences(plan: Plan, labels: dict[str, str], w: Words) -> list[str]:
    out = []
    for i, f in enumerate(plan.facts):
        s = cap(w.rng.choice(f.sentence))
        if labels["ambiguity"] == "moderate" and i % 2 == 0:
            s = w.pick(*HEDGES) + _lower_first(s)
        elif i and w.rng.random() < 0.35:
            s = w.pick(*CONNECTIVES) + _lower_first(s)
        out.append(s)
    return out


def body_sentences(
    plan: Plan, labels: dict[str, str], rng: random.Random
) -> tuple[list[str], str, str]:
    """The document's sentences by content focus, plus its main question and short answer."""
    w = Words(rng)
    mode = labels["reasoning_explicitness"]
    focus = labels["content_focus"]
    facts = _fact_sentences(plan, labels, w)
    rng.shuffle(facts)
    reasoning = [s for c in plan.computations for s in _reason(c, mode, w)]
    main = plan.computations[0]
    lines: list[str] = []
    if labels["temporal_focus"] == "contemporary":
        lines.append(w.pick(*CONTEMPORARY))
    if focus == "factual_explanation":
        lines += [
            f"{w.pick('This note explains', 'Here we describe', 'What follows covers')} {plan.subject}."
        ]
        lines += facts + reasoning
    elif focus == "procedural":
        lines += [
            f"{w.pick('Here is how to work out', 'To answer', 'The procedure for')}: {main.question[0].lower()}{main.question[1:]}"
        ]
        lookups = (
            "Look up:",
            "Find in the record:",
            "Note down:",
            "Collect the figure:",
            "Check:",
            "From the archive:",
        )
        lines += [f"{w.pick(*lookups)} {f}" for f in facts]
        lines += reasoning
        lines += [
            f"{w.pick('Finally, record the answer', 'Write down the result', 'The procedure ends with the answer')}: {main.answer}."
        ]
    elif focus == "reasoning_exposition":
        lines += [f"{w.pick('Claim', 'Thesis', 'To show')}: {main.conclusion}"]
        lines += [
            f"{w.pick('Premise', 'Known', 'Given', 'Fact', 'We know', 'Recall')}: {f}"
            for f in facts
        ]
        lines += reasoning + [
            f"{w.pick('Hence the claim holds', 'This establishes the claim', 'The claim follows')}."
        ]
    elif focus == "argumentation":
        lines += [
            f"{main.question} {w.pick('Opinions differ.', 'People disagree.', 'The question is debated.')}"
        ]
        half = max(1, len(facts) // 2)
        lines += [
            f"{w.pick('One side points out that', 'Supporters note that', 'A first view stresses that')} {facts[0][0].lower()}{facts[0][1:]}"
        ] + facts[1:half]
        lines += [
            f"{w.pick('The other side answers that', 'Skeptics reply that', 'A second view stresses that')} {facts[half][0].lower()}{facts[half][1:]}"
            if len(facts) > half
            else "The other side asks for more evidence."
        ] + facts[half + 1 :]
        lines += [
            f"{w.pick('Weighing the evidence', 'On balance', 'Taking both into account')}:"
        ] + reasoning
    elif focus == "creative_narrative":
        opener = w.pick(
            "The story begins on a grey morning.",
            "It was the kind of evening when archives come alive.",
            "Nobody expected the ledger to matter.",
        )
        lines += [opener] + facts
        lines += [
            f"{w.pick('She took out a pencil and worked it through.', 'He counted twice, to be sure.', 'The clerk frowned and did the sum.')}"
        ] + reasoning
        lines += [
            w.pick(
                "And that settled the matter.",
                "The ledger was closed, the answer written in ink.",
                "Everyone went home a little wiser.",
            )
        ]
    else:  # metacognitive
        lines += [
            f"{w.pick('Before answering, I list what I know.', 'Let me first check what I actually know.', 'I want to be careful here, so I start from the facts.')}"
        ]
        lines += facts
        lines += [
            w.pick(
                "I could guess, but a calculation is safer.",
                "My first instinct might be wrong, so I check.",
                "I should not trust a vague memory here.",
            )
        ]
        lines += reasoning
        lines += [
            f"{w.pick('Checking my work', 'Verifying', 'As a check')}: {main.expression}, {w.pick('which holds', 'which is consistent', 'as expected')}."
        ]
    competing = getattr(plan, "competing", None)
    if competing:
        lines.append(competing[0])
        lines.append(
            w.pick(
                "Both readings are defensible; the question is ambiguous.",
                "Which reading is meant decides the answer.",
                "So the honest answer is: it depends.",
            )
        )
    style = STYLE_LINES[labels["style"]]
    if style:
        picked = rng.sample(style, 2)
        lines = [picked[0]] + lines + [picked[1]]
    return lines, main.question, main.answer


def layout(plan: Plan, labels: dict[str, str], rng: random.Random, world: World) -> str:
    """Lay the sentences out in the document's format."""
    lines, question, answer = body_sentences(plan, labels, rng)
    w = Words(rng)
    fmt = labels["format"]
    if fmt == "structured_prose":
        cut = max(1, len(lines) // 2)
        return f"{plan.title}\n\n" + " ".join(lines[:cut]) + "\n\n" + " ".join(lines[cut:])
    if fmt == "dialogue":
        a, b = rng.sample(world.people, 2)
        speakers = [mark("person", a.id, a.first), mark("person", b.id, b.first)]
        turns = [f"{speakers[0]}: {question}"]
        for i in range(0, len(lines), 2):
            turns.append(f"{speakers[(i // 2 + 1) % 2]}: {' '.join(lines[i : i + 2])}")
        turns.append(
            f"{speakers[0]}: {w.pick('So the answer is', 'Got it, so', 'Then it is')} {answer}."
        )
        return "\n".join(turns)
    if fmt == "instructional":
        steps = [f"{i + 1}. {s}" for i, s in enumerate(lines)]
        return f"{w.pick('How to answer', 'Steps for', 'Guide')}: {question}\n\n" + "\n".join(steps)
    if fmt == "qa_direct":
        return f"Q: {question}\nA: {cap(answer)}. " + " ".join(lines)
    if fmt == "qa_rationale":
        return f"Question: {question}\nRationale: " + " ".join(lines) + f"\nAnswer: {answer}"
    # notes: fragments, not sentences
    bullets = [f.fragment for f in plan.facts]
    bullets += [
        c.expression
        + (
            f" ({c.wrong} was wrong)"
            if labels["reasoning_explicitness"] == "self_corrective" and c.wrong
            else ""
        )
        for c in plan.computations
    ]
    if labels["reasoning_explicitness"] == "self_corrective" and not any(
        c.wrong for c in plan.computations
    ):
        bullets.append("first guess reversed; corrected after checking the numbers")
    if labels["reasoning_explicitness"] == "probabilistic":
        bullets.append("odds stated from the register counts")
    competing = getattr(plan, "competing", None)
    if competing:
        bullets.append("ambiguous: " + competing[0].split("? ", 1)[-1])
    if labels["temporal_focus"] == "contemporary":
        bullets.insert(0, f"as of {REFERENCE_YEAR}")
    style = STYLE_LINES[labels["style"]]
    if style:
        bullets.append(rng.choice(style).lower().rstrip("."))
    return (
        f"notes: {plan.title.lower()}\n"
        + "\n".join(f"- {b}" for b in bullets)
        + f"\n- q: {question} → {answer}"
    )


def make_document(world: World, labels: dict[str, str], rng: random.Random) -> dict[str, Any]:
    plan = plan_document(world, labels, rng)
    text, spans = strip_marks(layout(plan, labels, rng, world))
    checks = list(plan.checks)
    if getattr(plan, "competing", None):
        checks += plan.competing[1]  # type: ignore[attr-defined]
    return {
        "text": text,
        "source": "synthetic",
        "labels": dict(labels),
        "spans": spans,
        "checks": checks,
    }


def generate_documents(
    world: World, n: int, seed: int, split: str = "train"
) -> list[dict[str, Any]]:
    """n documents whose labels meet every dimension's quota exactly."""
    rng = random.Random(f"documents-{seed}-{split}")
    docs = []
    for i, labels in enumerate(quota_labels(n, rng)):
        doc = make_document(world, labels, random.Random(f"doc-{seed}-{split}-{i}"))
        doc["id"] = f"synthetic-{split}-{i:06d}"
        docs.append(doc)
    return docs


def realized_distribution(docs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Share of each label value per dimension."""
    out: dict[str, dict[str, float]] = {}
    for dim, shares in DIMENSIONS.items():
        counts = {k: 0 for k in shares}
        for d in docs:
            counts[d["labels"][dim]] += 1
        total = max(1, len(docs))
        out[dim] = {k: c / total for k, c in counts.items()}
    return out
