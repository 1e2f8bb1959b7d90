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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labkit.data.world import World

REFERENCE_YEAR = 2025  # "now" for contemporary documents

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
    for k in sorted(raw, key=lambda k: (raw[k] - counts[k], k), reverse=True)[: n - sum(counts.values())]:
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
        return mark("number", f"{kind}.{ident}.{attr}", surface or fmt_num(value), attr=str(value))

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
        ]

    def person_facts(self, p) -> list[Fact]:
        city, org = self.w.cities[p.city], self.w.organisations[p.employer]
        return [
            Fact(
                [
                    f"{self.person(p)} is a {p.occupation} born in {self.num('people', p.id, 'born', p.born)}.",
                    f"Born in {self.num('people', p.id, 'born', p.born)}, {self.person(p)} works as a {p.occupation}.",
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
                [f"{self.person(p)} stands {self.num('people', p.id, 'height_cm', p.height_cm)} cm tall."],
                f"height {self.num('people', p.id, 'height_cm', p.height_cm)} cm",
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
                    f"The {self.org(o)} counts {self.num('organisations', o.id, 'members', o.members)} members.",
                    f"Its membership stands at {self.num('organisations', o.id, 'members', o.members)}.",
                ],
                f"members {self.num('organisations', o.id, 'members', o.members)}",
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
                    f"{self.person(who)} discovered {self.element(e)} in {self.num('elements', e.id, 'discovered', e.discovered)}.",
                    f"It was first isolated in {self.num('elements', e.id, 'discovered', e.discovered)} by {self.person(who)}.",
                ],
                f"disc. {self.num('elements', e.id, 'discovered', e.discovered)} ({self.person(who)})",
            ),
        ]

    def species_facts(self, s) -> list[Fact]:
        region = self.w.cities[s.region]
        return [
            Fact(
                [
                    f"The {self.species(s)} is a {s.cls} of the {s.habitat} near {self.city(region)}.",
                    f"Near {self.city(region)}, the {s.habitat} are home to the {self.species(s)}, a {s.cls}.",
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
                [f"The {self.species(s)} is a {s.diet}.", f"By diet, the {self.species(s)} is a {s.diet}."],
                f"diet: {s.diet}",
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
    def difference(self, a_name, a_ref, a_val, b_name, b_ref, b_val, unit: str, what: str) -> Computation:
        """a - b for two world values (a >= b)."""
        if a_val < b_val:
            a_name, a_ref, a_val, b_name, b_ref, b_val = b_name, b_ref, b_val, a_name, a_ref, a_val
        diff = a_val - b_val
        a_s, b_s = self.num(*a_ref, a_val), self.num(*b_ref, b_val)
        res = self.result(diff)
        return Computation(
            question=f"How many {unit} separate {what}?",
            given=[f"{a_name}: {a_s}", f"{b_name}: {b_s}"],
            steps=[f"take {a_name}, {a_s}", f"take {b_name}, {b_s}", f"subtract: {a_s} − {b_s} = {res}"],
            expression=f"{a_s} − {b_s} = {res}",
            conclusion=f"{cap(what)} are {res} {unit} apart.",
            answer=f"{res} {unit}",
            check={"op": "sub", "refs": [a_ref, b_ref], "result": diff},
            wrong=f"{a_s} − {b_s} = {fmt_num(diff + self.rng.choice([-10, 10, 1, -1, 100]))}",
        )

    def compare(self, items: list[tuple[str, list, Any]], attr_phrase: str, more: str) -> Computation:
        """Which of the items has the largest value."""
        best = max(items, key=lambda t: t[2])
        given = [f"{name}: {self.num(*ref, val)}" for name, ref, val in items]
        ordered = " > ".join(
            self.num(*ref, val) for name, ref, val in sorted(items, key=lambda t: t[2], reverse=True)
        )
        return Computation(
            question=f"Which has {more} {attr_phrase}?",
            given=given,
            steps=[f"list the {attr_phrase}: " + "; ".join(given), f"order them: {ordered}"],
            expression=ordered,
            conclusion=f"{best[0]} has {more} {attr_phrase}.",
            answer=mark("answer", "compare", best[0]),
            check={"op": "argmax", "refs": [ref for _, ref, _ in items], "result": best[1]},
        )

    def convert(self, name: str, ref: list, value: float, unit: str, to: str, factor: float, offset: float, digits: int) -> Computation:
        out = round(value * factor + offset, digits)
        v_s, r_s = self.num(*ref, value), self.result(out, f"{out:,.{digits}f}")
        op = f"× {factor:g}" if offset == 0 else f"{'+' if offset > 0 else '−'} {abs(offset):g}"
        return Computation(
            question=f"What is {name} in {to}?",
            given=[f"{name}: {v_s} {unit}"],
            steps=[f"start from {v_s} {unit}", f"apply the conversion: {v_s} {op}", f"round to get {r_s} {to}"],
            expression=f"{v_s} {unit} {op} = {r_s} {to}",
            conclusion=f"{cap(name)} is {r_s} {to}.",
            answer=f"{r_s} {to}",
            check={"op": "convert", "refs": [ref], "factor": factor, "offset": offset, "digits": digits, "result": out},
            wrong=f"{v_s} {unit} {op} = {fmt_num(round(out * 10, digits))} {to}",
        )

    def ratio(self, name: str, a_ref, a_val, b_ref, b_val, unit: str) -> Computation:
        out = round(a_val / b_val, 1)
        a_s, b_s, r_s = self.num(*a_ref, a_val), self.num(*b_ref, b_val), self.result(out, f"{out:,.1f}")
        return Computation(
            question=f"What is {name}?",
            given=[a_s, b_s],
            steps=[f"divide {a_s} by {b_s}", f"round to one decimal: {r_s}"],
            expression=f"{a_s} ÷ {b_s} ≈ {r_s}",
            conclusion=f"{cap(name)} is about {r_s} {unit}.",
            answer=f"{r_s} {unit}",
            check={"op": "div", "refs": [a_ref, b_ref], "digits": 1, "result": out},
            wrong=f"{a_s} ÷ {b_s} ≈ {fmt_num(round(out * 10, 1))}",
        )

    def product(self, name: str, ref, val, given_val: int, given_phrase: str, unit: str) -> Computation:
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
            question=f"How many days passed between the {self.event(a)} and the {self.event(b)}?",
            given=[f"{self.event(a)}: {da}", f"{self.event(b)}: {db}"],
            steps=[f"the earlier date is {da}", f"the later date is {db}", f"count the days between them: {res}"],
            expression=f"{db} − {da} = {res} days",
            conclusion=f"{res} days separate the {self.event(a)} from the {self.event(b)}.",
            answer=f"{res} days",
            check={"op": "days", "refs": [["events", a.id, "date"], ["events", b.id, "date"]], "result": days},
            wrong=f"{db} − {da} = {fmt_num(days + 365)} days",
        )

    def since(self, name: str, ref, year: int) -> Computation:
        """Years from a world year to REFERENCE_YEAR (contemporary documents)."""
        out = REFERENCE_YEAR - year
        y, r = self.num(*ref, year), self.result(out)
        return Computation(
            question=f"As of {REFERENCE_YEAR}, how many years ago was {name}?",
            given=[f"{name}: {y}", f"the current year: {REFERENCE_YEAR}"],
            steps=[f"the year now is {REFERENCE_YEAR}", f"{name} was in {y}", f"{REFERENCE_YEAR} − {y} = {r}"],
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
            given=[f"the register lists {self.result(n)} workers at the {self.org(org)}", f"{self.result(k)} of them are {occupation}s"],
            steps=[f"count the {occupation}s: {k}", f"count everyone: {n}", f"the odds are {k} in {n}, about {res}"],
            expression=f"{k} / {n} ≈ {res}",
            conclusion=f"The chance is {k} in {n}, roughly {res}.",
            answer=f"about {res}",
            check={"op": "prob", "org": org.id, "occupation": occupation, "k": k, "n": n, "result": pct},
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
            steps=[f"premise: {rule}", f"premise: {self.element(e)} was discovered in {y}", f"{y} is {'before' if old else 'not before'} {threshold}, so the rule applies"],
            expression=f"{y} {'<' if old else '≥'} {threshold}",
            conclusion=f"Therefore {self.element(e)} is {'an early' if old else 'a modern'} element.",
            answer=mark("answer", "syllogism", f"yes, {'an early' if old else 'a modern'} element"),
            check={"op": "threshold", "refs": [["elements", e.id, "discovered"]], "threshold": threshold, "result": old},
        )


def _competing(t: Topics, kind: str) -> tuple[str, list[str]] | None:
    """Two readings of "bigger"/"older" that disagree: the high-ambiguity device."""
    pairs = {
        "cities": ("population", "area_km2", "larger", "residents", "square kilometres", t.city),
        "elements": ("density", "melting_point_k", "heavier-duty", "g/cm³", "K", t.element),
        "species": ("mass_kg", "lifespan_years", "bigger", "kg", "years", t.species),
        "organisations": ("members", "founded", "greater", "members", "(year founded)", t.org),
    }
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
                f"By {a1.replace('_', ' ')}, {name(w1)} wins ({t.num(kind, x.id, a1, v(x, a1))} vs "
                f"{t.num(kind, y.id, a1, v(y, a1))} {u1}); by {a2.replace('_', ' ')}, {name(w2)} does "
                f"({t.num(kind, x.id, a2, v(x, a2))} vs {t.num(kind, y.id, a2, v(y, a2))} {u2})."
            )
            check = {"op": "competing", "kind": kind, "ids": [x.id, y.id], "attrs": [a1, a2], "result": [w1.id, w2.id]}
            return text, [check]  # type: ignore[return-value]
    return None
