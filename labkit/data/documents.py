"""High-density documents about the synthetic world, labelled along seed 000's nine dimensions.

Each document is planned from its labels: a per-domain planner (`PLANNERS`) picks what it talks
about (facts and computations over world entities), the content focus picks the frame (explain,
instruct, reason, argue, narrate, reflect: `FOCUS`), the format lays it out (`FORMATS`), and the
remaining dimensions change sentences (how explicit the reasoning is, how many facts, hedging and
competing readings, present-day framing, tone). The wording lives in `templates.toml`.

Two kinds of entity appear: the world's core entities, whose facts recur across documents (what
probes read as world knowledge), and each document's cast, people invented for that document
alone and named in full several times (`labkit.data.cast`): the only way to predict the second
mention of such a name is to copy it from the first, which is what grows induction heads.

Every number a document states comes from the world or from a computation over it, and each
computation is recorded as a `check` ({op, refs into the world, operands, result}) so tests recompute
it. Entity mentions and numbers carry character spans, which probes use as token targets.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labkit.data.cast import Cast, make_cast
from labkit.data.templates import render, table
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
# Mentions are written inline as \x01kind|id|attr\x02surface\x03 and become character spans at the
# end. Marks nest (an answer that is an entity name holds the entity's mark); `strip_marks` parses
# them with a stack, so no mark's header can ever reach the text.
def mark(kind: str, ident: Any, surface: Any, attr: str = "") -> str:
    return f"\x01{kind}|{ident}|{attr}\x02{surface}\x03"


def strip_marks(text: str) -> tuple[str, list[dict[str, Any]]]:
    """The text without marks, and one span per mark (outer marks before the marks they hold)."""
    out: list[str] = []
    spans: list[dict[str, Any]] = []
    stack: list[dict[str, Any]] = []
    pos, i = 0, 0
    while i < len(text):
        ch = text[i]
        if ch == "\x01":
            j = text.index("\x02", i)
            kind, ident, attr = text[i + 1 : j].split("|", 2)
            span: dict[str, Any] = {"start": pos, "end": pos, "type": kind, "id": ident}
            if attr:
                span["attr"] = attr
            spans.append(span)
            stack.append(span)
            i = j + 1
            continue
        if ch == "\x03":
            stack.pop()["end"] = pos
        else:
            out.append(ch)
            pos += 1
        i += 1
    if stack:
        raise ValueError(f"unclosed mention mark in {text[:80]!r}")
    return "".join(out), spans


def cap(s: str) -> str:
    """Capitalise the first visible character, skipping any mention marker."""
    i = 0
    while i < len(s) and s[i] == "\x01":
        i = s.index("\x02", i) + 1
    return s[:i] + s[i : i + 1].upper() + s[i + 1 :] if i < len(s) else s


def lower_first(s: str) -> str:
    """Lower-case the first visible character unless it starts a name (a mark)."""
    return s if not s or s.startswith("\x01") else s[0].lower() + s[1:]


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
    """One fact about an entity: its template entry and the slots that fill it."""

    key: str  # "cities.population": facts.<key> and fragments.<key> in templates.toml
    slots: dict[str, str]

    def render(self, rng: random.Random) -> str:
        return cap(render(f"facts.{self.key}", self.slots, rng))

    def fragment(self, rng: random.Random) -> str:
        return render(f"fragments.{self.key}", self.slots, rng)


@dataclass
class Computation:
    question: str
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
    competing: tuple[str, list[dict]] | None = None
    cast: Cast | None = None


class Words:
    """Phrase variants, chosen with the document's RNG."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def pick(self, *options: str) -> str:
        return self.rng.choice(options)


FACT_KEYS = {
    "cities": ("population", "founded", "geography", "character"),
    "people": ("born", "home", "personal"),
    "organisations": ("founded", "members"),
    "elements": ("number", "physical", "discovery"),
    "species": ("habitat", "body", "diet"),
    "events": ("date", "attendance"),
}


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

    # ---- facts: slots per entity kind; the wording is in templates.toml
    def facts(self, kind: str, e) -> list[Fact]:
        slots = getattr(self, f"_{kind}_slots")(e)
        return [Fact(f"{kind}.{k}", slots) for k in FACT_KEYS[kind]]

    def city_facts(self, c) -> list[Fact]:
        return self.facts("cities", c)

    def person_facts(self, p) -> list[Fact]:
        return self.facts("people", p)

    def org_facts(self, o) -> list[Fact]:
        return self.facts("organisations", o)

    def element_facts(self, e) -> list[Fact]:
        return self.facts("elements", e)

    def species_facts(self, s) -> list[Fact]:
        return self.facts("species", s)

    def event_facts(self, ev) -> list[Fact]:
        return self.facts("events", ev)

    def _cities_slots(self, c) -> dict[str, str]:
        n = lambda attr: self.num("cities", c.id, attr, getattr(c, attr))  # noqa: E731
        country = self.w.countries[c.country]
        return {"city": self.city(c), "country": mark("country", country.id, country.name),
                "population": n("population"), "founded": n("founded"), "area": n("area_km2"),
                "elevation": n("elevation_m"), "landmark": c.landmark,
                "a_landmark": a(c.landmark), "industry": c.industry}  # fmt: skip

    def _people_slots(self, p) -> dict[str, str]:
        n = lambda attr: self.num("people", p.id, attr, getattr(p, attr))  # noqa: E731
        return {"person": self.person(p), "occupation": p.occupation,
                "a_occupation": a(p.occupation), "born": n("born"),
                "home": self.city(self.w.cities[p.city]),
                "employer": self.org(self.w.organisations[p.employer]),
                "height": n("height_cm"), "hobby": p.hobby}  # fmt: skip

    def _organisations_slots(self, o) -> dict[str, str]:
        n = lambda attr: self.num("organisations", o.id, attr, getattr(o, attr))  # noqa: E731
        return {"org": self.org(o), "city": self.city(self.w.cities[o.city]),
                "founded": n("founded"), "members": n("members"), "field": o.field}  # fmt: skip

    def _elements_slots(self, e) -> dict[str, str]:
        n = lambda attr: self.num("elements", e.id, attr, getattr(e, attr))  # noqa: E731
        return {"element": self.element(e), "symbol": e.symbol, "z": n("atomic_number"),
                "melting": n("melting_point_k"), "density": n("density"),
                "discovered": n("discovered"), "colour": e.colour,
                "discoverer": self.person(self.w.people[e.discoverer])}  # fmt: skip

    def _species_slots(self, s) -> dict[str, str]:
        n = lambda attr: self.num("species", s.id, attr, getattr(s, attr))  # noqa: E731
        return {"species": self.species(s), "cls": s.cls, "a_cls": a(s.cls),
                "habitat": s.habitat, "region": self.city(self.w.cities[s.region]),
                "mass": n("mass_kg"), "lifespan": n("lifespan_years"), "diet": s.diet,
                "a_diet": a(s.diet), "colour": s.colour, "a_colour": a(s.colour)}  # fmt: skip

    def _events_slots(self, ev) -> dict[str, str]:
        d = dt.date.fromisoformat(ev.date)
        return {"event": self.event(ev), "city": self.city(self.w.cities[ev.city]),
                "date": self.num("events", ev.id, "date", ev.date, d.strftime("%B %-d, %Y")),
                "attendance": self.num("events", ev.id, "attendance", ev.attendance)}  # fmt: skip

    # ---- computations: values, checks and slots here; the wording in templates.toml [ops.*]
    def _op(self, op: str, slots: dict[str, str], check: dict, answer: str, expression: str,
            wrong: str | None = None) -> Computation:  # fmt: skip
        """A computation whose question, steps and conclusion are the table's `ops.<op>`."""
        r = lambda part: render(f"ops.{op}.{part}", slots, self.rng)  # noqa: E731
        n_steps = sum(1 for k in table() if k.startswith(f"ops.{op}.step"))
        return Computation(
            question=cap(r("question")),
            steps=[r(f"step{i + 1}") for i in range(n_steps)],
            expression=expression,
            conclusion=cap(r("conclusion")),
            answer=answer,
            check=check,
            wrong=wrong,
        )

    def difference(
        self, a_name, a_ref, a_val, b_name, b_ref, b_val, unit: str, what: str
    ) -> Computation:
        """a - b for two world values (a >= b)."""
        if a_val < b_val:
            a_name, a_ref, a_val, b_name, b_ref, b_val = b_name, b_ref, b_val, a_name, a_ref, a_val
        diff = a_val - b_val
        a_s, b_s, res = self.num(*a_ref, a_val), self.num(*b_ref, b_val), self.result(diff)
        slots = {"a_name": a_name, "b_name": b_name, "a": a_s, "b": b_s, "res": res,
                 "unit": unit, "what": what}  # fmt: skip
        check = {"op": "sub", "refs": [a_ref, b_ref], "result": diff}
        wrong = f"{a_s} − {b_s} = {fmt_num(diff + self.rng.choice([-10, 10, 1, -1, 100]))}"
        return self._op("sub", slots, check, f"{res} {unit}", f"{a_s} − {b_s} = {res}", wrong)

    def compare(
        self, items: list[tuple[str, list, Any]], attr_phrase: str, more: str
    ) -> Computation:
        """Which of the items has the largest value."""
        best = max(items, key=lambda t: t[2])
        ranked = sorted(items, key=lambda t: t[2], reverse=True)
        ordered = self.num(*ranked[0][1], ranked[0][2])
        for (_, _, prev), (_, ref, val) in zip(ranked, ranked[1:], strict=False):
            ordered += f" {'>' if prev > val else '='} {self.num(*ref, val)}"
        names = [n for n, _, _ in items]
        slots = {"items": ", ".join(names[:-1]) + " and " + names[-1],
                 "items_or": " or ".join(names), "attr": attr_phrase, "more": more,
                 "more_bare": more.replace("the ", ""), "best": best[0], "ordered": ordered,
                 "given": "; ".join(f"{n}: {self.num(*ref, v)}" for n, ref, v in items)}  # fmt: skip
        check = {"op": "argmax", "refs": [ref for _, ref, _ in items], "result": best[1]}
        return self._op("argmax", slots, check, mark("answer", "compare", best[0]), ordered)

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
        slots = {"name": name, "v": v_s, "unit": unit, "to": to, "op": op, "r": r_s}
        check = {"op": "convert", "refs": [ref], "factor": factor, "offset": offset,
                 "digits": digits, "result": out}  # fmt: skip
        wrong = f"{v_s} {unit} {op} = {fmt_num(round(out * 10, digits))} {to}"
        expression = f"{v_s} {unit} {op} = {r_s} {to}"
        return self._op("convert", slots, check, f"{r_s} {to}", expression, wrong)

    def ratio(self, name: str, a_ref, a_val, b_ref, b_val, unit: str) -> Computation:
        out = round(a_val / b_val, 1)
        a_s, b_s = self.num(*a_ref, a_val), self.num(*b_ref, b_val)
        r_s = self.result(out, f"{out:,.1f}")
        slots = {"name": name, "a": a_s, "b": b_s, "r": r_s, "unit": unit}
        check = {"op": "div", "refs": [a_ref, b_ref], "digits": 1, "result": out}
        wrong = f"{a_s} ÷ {b_s} ≈ {fmt_num(round(out * 10, 1))}"
        return self._op("div", slots, check, f"{r_s} {unit}", f"{a_s} ÷ {b_s} ≈ {r_s}", wrong)

    def product(
        self, name: str, ref, val, given_val: int, given_phrase: str, unit: str
    ) -> Computation:
        out = val * given_val
        v_s, r_s = self.num(*ref, val), self.result(out)
        slots = {"name": name, "v": v_s, "k": str(given_val), "r": r_s, "unit": unit}
        check = {"op": "mul", "refs": [ref], "constant": given_val, "result": out}
        wrong = f"{v_s} × {given_val} = {fmt_num(out + given_val)}"
        return self._op("mul", slots, check, f"{r_s} {unit}", f"{v_s} × {given_val} = {r_s}", wrong)

    def days_between(self, e1, e2) -> Computation:
        a_ev, b_ev = sorted([e1, e2], key=lambda e: e.date)
        days = (dt.date.fromisoformat(b_ev.date) - dt.date.fromisoformat(a_ev.date)).days
        da = self.num("events", a_ev.id, "date", a_ev.date, a_ev.date)
        db = self.num("events", b_ev.id, "date", b_ev.date, b_ev.date)
        res = self.result(days)
        slots = {"ea": self.event(a_ev), "eb": self.event(b_ev), "da": da, "db": db, "res": res}
        check = {"op": "days", "refs": [["events", a_ev.id, "date"], ["events", b_ev.id, "date"]],
                 "result": days}  # fmt: skip
        wrong = f"{db} − {da} = {fmt_num(days + 365)} days"
        return self._op("days", slots, check, f"{res} days", f"{db} − {da} = {res} days", wrong)

    def since(self, name: str, ref, year: int) -> Computation:
        """Years from a world year to REFERENCE_YEAR (contemporary documents)."""
        out = REFERENCE_YEAR - year
        y, r = self.num(*ref, year), self.result(out)
        slots = {"name": name, "y": y, "r": r, "now": str(REFERENCE_YEAR)}
        check = {"op": "since", "refs": [ref], "now": REFERENCE_YEAR, "result": out}
        wrong = f"{REFERENCE_YEAR} − {y} = {fmt_num(out - 10)}"
        return self._op("since", slots, check, f"{r} years", f"{REFERENCE_YEAR} − {y} = {r}", wrong)

    def probability(self, org) -> Computation:
        staff = [p for p in self.w.people if p.employer == org.id]
        occupation = self.rng.choice([p.occupation for p in staff]) if staff else "chemist"
        k, n = sum(p.occupation == occupation for p in staff), len(staff)
        n = max(n, 1)
        pct = round(100 * k / n)
        res = self.result(pct, f"{pct}%")
        slots = {"org": self.org(org), "occupation": occupation, "a_occupation": a(occupation),
                 "k": str(k), "n": str(n), "kk": self.result(k), "nn": self.result(n),
                 "occupations": occupation + ("" if k == 1 else "s"),
                 "res": res}  # fmt: skip
        check = {"op": "prob", "org": org.id, "occupation": occupation, "k": k, "n": n,
                 "result": pct}  # fmt: skip
        wrong = f"{k} / {n} ≈ {min(100, pct + 20)}%"
        return self._op("prob", slots, check, f"about {res}", f"{k} / {n} ≈ {res}", wrong)

    def syllogism(self, e) -> Computation:
        """Is element e early/modern? The concept is fixed per world (its median discovery year),
        and which class is asked about is drawn per document, so "yes" and "no" are equally
        likely."""
        threshold = self.w.concepts["early_element_before"]
        old = e.discovered < threshold
        asked = self.rng.choice(["early", "modern"])
        yes = (asked == "early") == old
        rule = self.say.pick(
            f"an element discovered before {threshold} is called early, one discovered later modern",
            f"elements found before {threshold} count as early, later ones as modern",
            f"the early elements are those discovered before {threshold}; the rest are modern",
        )
        y = self.num("elements", e.id, "discovered", e.discovered)
        verdict = f"{'yes' if yes else 'no'} ({'early' if old else 'modern'})"
        return Computation(
            question=f"Is {self.element(e)} {a(asked)} element?",
            steps=[
                f"premise: {rule}",
                f"premise: {self.element(e)} was discovered in {y}",
                f"{y} is {'before' if old else 'not before'} {threshold}, so {self.element(e)} is {'early' if old else 'modern'}",
            ],
            expression=f"{y} {'<' if old else '≥'} {threshold}",
            conclusion=self.say.pick(
                f"{self.element(e)} is {'an early' if old else 'a modern'} element, so the answer is {'yes' if yes else 'no'}.",
                f"{'Yes' if yes else 'No'}: {self.element(e)} counts as {'early' if old else 'modern'}.",
                f"So {self.element(e)} {'is' if yes else 'is not'} {a(asked)} element.",
                f"The answer is {'yes' if yes else 'no'}, since {self.element(e)} is {'early' if old else 'modern'}.",
            ),
            answer=mark("answer", "syllogism", verdict),
            check={
                "op": "threshold",
                "refs": [["elements", e.id, "discovered"]],
                "threshold": threshold,
                "asked": asked,
                "answer": "yes" if yes else "no",
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
                t.say.pick(
                    f"Which is the {word}, {name(x)} or {name(y)}? ",
                    f"Is {name(x)} or {name(y)} the {word}? ",
                    f"Which of {name(x)} and {name(y)} is the {word}? ",
                )
                + t.say.pick(
                    "By {r1}, {w1} wins ({x1} vs {y1}{u1}); by {r2}, {w2} does ({x2} vs {y2}{u2}).",
                    "On {r1} ({x1} vs {y1}{u1}) {w1} comes first, but on {r2} ({x2} vs {y2}{u2}) {w2} does.",
                    "{w1} leads on {r1}, {x1} against {y1}{u1}; {w2} leads on {r2}, {x2} against {y2}{u2}.",
                ).format(
                    r1=readings[a1],
                    r2=readings[a2],
                    w1=name(w1),
                    w2=name(w2),
                    x1=t.num(kind, x.id, a1, v(x, a1)),
                    y1=t.num(kind, y.id, a1, v(y, a1)),
                    x2=t.num(kind, x.id, a2, v(x, a2)),
                    y2=t.num(kind, y.id, a2, v(y, a2)),
                    u1=f" {u1}",
                    u2=f" {u2}" if u2 else ", founding years",
                )  # fmt: skip
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
@dataclass
class Draft:
    """What a domain planner chooses: the topic, candidate facts and computations."""

    title: str
    subject: str
    competing_kind: str
    facts: list[Fact]
    pool: list[Callable[[], Computation]]
    year_ref: tuple[list, int, str] | None = None
    lead: int = 0  # how many pool entries advanced documents always take first


Planner = Callable[[World, Topics, dict[str, str], random.Random], Draft]
PLANNERS: dict[str, list[Planner]] = {}


def planner(*domains: str) -> Callable[[Planner], Planner]:
    """Register a planner for domains; a domain with several planners draws one per document."""

    def register(fn: Planner) -> Planner:
        for d in domains:
            PLANNERS.setdefault(d, []).append(fn)
        return fn

    return register


@planner("stem")
def _plan_elements(world: World, t: Topics, labels: dict[str, str], rng: random.Random) -> Draft:
    els = rng.sample(world.elements, 3)
    e = els[0]
    facts = [f for x in els for f in t.element_facts(x)]
    pool = [
        lambda: t.convert(t.say.pick(f"the melting point of {t.element(e)}", f"the temperature at which {t.element(e)} melts", f"the point where {t.element(e)} turns liquid"),
                          ["elements", e.id, "melting_point_k"], e.melting_point_k, "K", "°C",
                          1, -273.15, 2),
        lambda: t.compare([(t.element(x), ["elements", x.id, "density"], x.density) for x in els],
                          "density", "the highest"),
        lambda: t.difference(t.element(els[0]), ["elements", els[0].id, "atomic_number"],
                             els[0].atomic_number, t.element(els[1]),
                             ["elements", els[1].id, "atomic_number"], els[1].atomic_number,
                             "places",
                             t.say.pick(f"the atomic numbers of {t.element(els[0])} and {t.element(els[1])}", f"{t.element(els[0])} and {t.element(els[1])} in the table", f"the table positions of {t.element(els[0])} and {t.element(els[1])}")),
        lambda: t.syllogism(e),
    ]  # fmt: skip
    lead = 0
    if labels["conceptual_complexity"] == "advanced":  # interdisciplinary: chemistry x biography
        who = world.people[e.discoverer]
        facts += t.person_facts(who)[:1]
        pool.insert(0, lambda: t.difference(
            f"the discovery of {t.element(e)}", ["elements", e.id, "discovered"], e.discovered,
            f"the birth of {t.person(who)}", ["people", who.id, "born"], who.born, "years",
            f"the birth of {t.person(who)} and the discovery of {t.element(e)}"))  # fmt: skip
        lead = 1
    year_ref = (["elements", e.id, "discovered"], e.discovered, f"the discovery of {t.element(e)}")
    return Draft(f"The element {e.name}", t.element(e), "elements", facts, pool, year_ref, lead)


@planner("stem")
def _plan_species(world: World, t: Topics, labels: dict[str, str], rng: random.Random) -> Draft:
    sps = rng.sample(world.species, 3)
    s, s2 = sps[0], sps[1]
    facts = [f for x in sps for f in t.species_facts(x)]
    pool = [
        lambda: t.convert(t.say.pick(f"the mass of an adult {t.species(s)}", f"the weight of a grown {t.species(s)}", f"what an adult {t.species(s)} weighs"), ["species", s.id, "mass_kg"],
                          s.mass_kg, "kg", "lb", 2.20462, 0, 1),
        lambda: t.compare([(t.species(x), ["species", x.id, "lifespan_years"], x.lifespan_years)
                           for x in sps], "lifespan", "the longest"),
        # Commensurable: how many times heavier one animal is than another (kg over kg).
        lambda: t.ratio(f"the mass of the {t.species(s)} over that of the {t.species(s2)}",
                        ["species", s.id, "mass_kg"], s.mass_kg,
                        ["species", s2.id, "mass_kg"], s2.mass_kg, "times"),
        lambda: t.difference(t.species(s), ["species", s.id, "lifespan_years"], s.lifespan_years,
                             t.species(s2), ["species", s2.id, "lifespan_years"],
                             s2.lifespan_years, "years",
                             t.say.pick(f"the lifespans of the {t.species(s)} and the {t.species(s2)}", f"how long the {t.species(s)} and the {t.species(s2)} live", f"the life expectancies of the {t.species(s)} and the {t.species(s2)}")),
    ]  # fmt: skip
    lead = 0
    if labels["conceptual_complexity"] == "advanced":  # interdisciplinary: biology x geography
        c = world.cities[s.region]
        facts += t.city_facts(c)[:1] + t.city_facts(c)[2:3]
        pool.insert(0, lambda: t.ratio(
            f"the population density of {t.city(c)}, where the {t.species(s)} lives",
            ["cities", c.id, "population"], c.population, ["cities", c.id, "area_km2"],
            c.area_km2, "residents per km²"))  # fmt: skip
        lead = 1
    return Draft(f"The {s.name}", t.species(s), "species", facts, pool, None, lead)


@planner("humanities_social", "creative_arts")
def _plan_society(world: World, t: Topics, labels: dict[str, str], rng: random.Random) -> Draft:
    arts = labels["domain"] == "creative_arts"
    if arts:
        p = _person_of(t, ("composer", "architect", "teacher"))
        evs = rng.sample([e for e in world.events if e.kind in ("festival", "fair", "congress")]
                         or world.events, 2)  # fmt: skip
    else:
        p, evs = _person_of(t), rng.sample(world.events, 2)
    orgs = [world.organisations[p.employer], rng.choice(world.organisations)]
    if orgs[1].id == orgs[0].id:
        orgs[1] = world.organisations[(orgs[0].id + 1) % len(world.organisations)]
    facts = t.person_facts(p) + t.org_facts(orgs[0]) + t.org_facts(orgs[1])
    facts += t.event_facts(evs[0]) + t.event_facts(evs[1])
    pool = [
        lambda: t.difference(
            f"the founding of the {t.org(orgs[0])}", ["organisations", orgs[0].id, "founded"],
            orgs[0].founded, f"the founding of the {t.org(orgs[1])}",
            ["organisations", orgs[1].id, "founded"], orgs[1].founded, "years",
            t.say.pick(f"the foundings of the {t.org(orgs[0])} and the {t.org(orgs[1])}", f"the founding years of the {t.org(orgs[0])} and the {t.org(orgs[1])}", f"the start of the {t.org(orgs[0])} and that of the {t.org(orgs[1])}")),
        lambda: t.days_between(evs[0], evs[1]),
        lambda: t.compare([(t.event(e), ["events", e.id, "attendance"], e.attendance)
                           for e in evs], "attendance", "the larger"),
        lambda: t.compare([(t.org(o), ["organisations", o.id, "members"], o.members)
                           for o in orgs], "membership", "the larger"),
    ]  # fmt: skip
    ev_year = int(evs[0].date[:4])
    if ev_year > p.born:
        pool.insert(0 if arts else 2, lambda: t.difference(
            f"the year of the {t.event(evs[0])}", ["events", evs[0].id, "year"], ev_year,
            f"the birth of {t.person(p)}", ["people", p.id, "born"], p.born, "years",
            f"the birth of {t.person(p)} and the {t.event(evs[0])}"))  # fmt: skip
    title = f"{p.name} and the {evs[0].name}" if arts else f"The {orgs[0].name}"
    subject = t.person(p) if arts else t.org(orgs[0])
    year_ref = (["organisations", orgs[0].id, "founded"], orgs[0].founded,
                f"the founding of the {t.org(orgs[0])}")  # fmt: skip
    return Draft(title, subject, "organisations", facts, pool, year_ref)


@planner("practical_applied")
def _plan_practical(world: World, t: Topics, labels: dict[str, str], rng: random.Random) -> Draft:
    cs = rng.sample(world.cities, 2)
    c, o = cs[0], rng.choice(world.organisations)
    facts = t.city_facts(cs[0]) + t.city_facts(cs[1]) + t.org_facts(o)
    fee = rng.choice([3, 5, 8, 12, 15, 20, 25])
    pool = [
        lambda: t.ratio(t.say.pick(f"the population density of {t.city(c)}", f"the crowding of {t.city(c)}, in residents per km²"), ["cities", c.id, "population"],
                        c.population, ["cities", c.id, "area_km2"], c.area_km2,
                        "residents per km²"),
        lambda: t.product(t.say.pick(f"the yearly dues collected by the {t.org(o)} at {fee} crowns a member", f"what the {t.org(o)} takes in a year if each member pays {fee} crowns", f"the annual income of the {t.org(o)} from dues of {fee} crowns a head"),
                          ["organisations", o.id, "members"], o.members, fee,
                          "crowns per member", "crowns"),
        lambda: t.convert(f"the area of {t.city(c)}", ["cities", c.id, "area_km2"], c.area_km2,
                          "km²", "hectares", 100, 0, 0),
        lambda: t.convert(f"the elevation of {t.city(c)}", ["cities", c.id, "elevation_m"],
                          c.elevation_m, "m", "feet", 3.28084, 0, 0),
        lambda: t.compare([(t.city(x), ["cities", x.id, "population"], x.population) for x in cs],
                          "population", "the larger"),
    ]  # fmt: skip
    year_ref = (["cities", c.id, "founded"], c.founded, f"the founding of {t.city(c)}")
    return Draft(f"Practical figures for {c.name}", t.city(c), "cities", facts, pool, year_ref)


@planner("abstract_reasoning")
def _plan_abstract(world: World, t: Topics, labels: dict[str, str], rng: random.Random) -> Draft:
    els = rng.sample(world.elements, 2)
    o = rng.choice(world.organisations)
    facts = t.element_facts(els[0]) + t.element_facts(els[1]) + t.org_facts(o)
    pool = [
        lambda: t.syllogism(els[0]),
        lambda: t.compare([(t.element(x), ["elements", x.id, "melting_point_k"], x.melting_point_k)
                           for x in els], "melting point", "the higher"),
        lambda: t.probability(o),
        lambda: t.syllogism(els[1]),
    ]  # fmt: skip
    year_ref = (["elements", els[0].id, "discovered"], els[0].discovered,
                f"the discovery of {t.element(els[0])}")  # fmt: skip
    title = f"Reasoning about {els[0].name} and {els[1].name}"
    subject = f"{t.element(els[0])} and {t.element(els[1])}"
    return Draft(title, subject, "elements", facts, pool, year_ref)


def _person_of(t: Topics, occupations: tuple[str, ...] = ()) -> Any:
    pool = [p for p in t.w.people if not occupations or p.occupation in occupations]
    return t.rng.choice(pool or t.w.people)


def plan_document(world: World, labels: dict[str, str], rng: random.Random) -> Plan:
    """Choose what a document says: a domain planner's facts and computations, as many as its
    complexity and factual density ask for, plus the document's one-off cast."""
    t = Topics(world, rng)
    draft = rng.choice(PLANNERS[labels["domain"]])(world, t, labels, rng)
    n_comp = {"basic": 1, "intermediate": 2, "advanced": 3}[labels["conceptual_complexity"]]
    head = draft.pool[: draft.lead]
    rest = draft.pool[draft.lead :]
    rng.shuffle(rest)
    comps = [make() for make in (head + rest)[:n_comp]]
    facts = list(draft.facts)
    if labels["reasoning_explicitness"] == "probabilistic" and not any(
        c.check["op"] == "prob" for c in comps
    ):
        org = rng.choice(world.organisations)
        comps.append(t.probability(org))
        facts += t.org_facts(org)[:1]
    if labels["temporal_focus"] == "contemporary" and draft.year_ref is not None:
        ref, year, name = draft.year_ref
        comps.append(t.since(name, ref, year))
    n_facts = {"low": 2, "moderate": 4, "high": 7}[labels["factual_density"]]
    plan = Plan(draft.title, draft.subject, facts[:n_facts], comps, [c.check for c in comps])
    if labels["ambiguity"] == "high":
        plan.competing = _competing(t, draft.competing_kind)
    plan.cast = make_cast(world, rng)
    return plan


# --------------------------------------------------------------------------- rendering
def _slots(plan: Plan, labels: dict[str, str], world: World) -> dict[str, str]:
    """The slots every template of a document may use."""
    main = plan.computations[0]
    cast = plan.cast.members if plan.cast else []
    first, second = cast[0], cast[1]
    home = world.cities[first.city]
    return {
        "a": mark("person", first.id, first.name),
        "b": mark("person", second.id, second.name),
        "a_role": render(
            "cast.role",
            {
                "occupation": first.occupation,
                "a_occupation": a(first.occupation),
                "home": mark("city", home.id, home.name),
                "age": str(first.age),
            },
            random.Random(first.id),
        ),  # fmt: skip
        "subject": plan.subject,
        "question": main.question,
        "question_lc": lower_first(main.question),
        "answer": main.answer,
        "conclusion": main.conclusion,
        "conclusion_lc": lower_first(main.conclusion),
        "expression": main.expression,
        "cast_tail": f", as {mark('person', first.id, first.name)} confirmed",
        "style_tail": f" for {mark('person', first.id, first.name)}",
        "verdict_tail": ".",
        "age": str(first.age),
        "home": mark("city", home.id, home.name),
        "since": str(first.since),
        "start_age": str(first.age - (REFERENCE_YEAR - first.since)),
        "place": mark("organisation", plan.cast.place_id, plan.cast.place),
        "when": plan.cast.worked_on.strftime("%B %-d, %Y"),
        "weekday": plan.cast.worked_on.strftime("%A"),
    }


def _reason(c: Computation, mode: str, slots: dict[str, str], rng: random.Random) -> list[str]:
    """A computation as sentences, as explicit as the label says."""
    s = slots | {"expression": c.expression, "conclusion_lc": lower_first(c.conclusion)}
    if mode == "implicit":
        return [cap(c.conclusion)]
    if mode in ("concise", "probabilistic"):
        return [render("reason.concise", s, rng)]
    if mode == "detailed_cot":
        lines = [
            f"{render('reason.cot_first' if i == 0 else 'reason.cot_next', s, rng)}, {step}."
            for i, step in enumerate(c.steps)
        ]
        return lines + [render("reason.cot_close", s, rng)]
    # self_corrective: a plausible wrong step, flagged and corrected
    if c.wrong:
        s["wrong"] = c.wrong
        return [render("reason.wrong", s, rng), render("reason.fix", s, rng), cap(c.conclusion)]
    return [render("reason.flip", s, rng), render("reason.flip_fix", s, rng), cap(c.conclusion)]


def _fact_sentences(plan: Plan, labels: dict[str, str], slots: dict, rng: random.Random) -> list:
    """Each fact once, hedged (moderate ambiguity), joined or attributed to the cast."""
    out = []
    for i, f in enumerate(plan.facts):
        s = f.render(rng)
        if labels["ambiguity"] == "moderate" and i % 2 == 0:
            s = render("ambiguity.hedge", slots, rng) + lower_first(s)
        elif rng.random() < 0.2:
            s = render("cast.attribute", slots, rng) + " " + lower_first(s)
        elif i and rng.random() < 0.3:
            s = render("ambiguity.connective", slots, rng) + lower_first(s)
        out.append(s)
    rng.shuffle(out)
    return out


Focus = Callable[[list[str], list[str], dict[str, str], random.Random], list[str]]
FOCUS: dict[str, Focus] = {}


def focus(name: str) -> Callable[[Focus], Focus]:
    def register(fn: Focus) -> Focus:
        FOCUS[name] = fn
        return fn

    return register


@focus("factual_explanation")
def _explain(facts: list[str], reasoning: list[str], s: dict, rng: random.Random) -> list[str]:
    r = lambda name: render(f"focus.factual_explanation.{name}", s, rng)  # noqa: E731
    return [r("open"), *facts, *reasoning, r("close")]


@focus("procedural")
def _procedure(facts: list[str], reasoning: list[str], s: dict, rng: random.Random) -> list[str]:
    r = lambda name, **kw: render(f"focus.procedural.{name}", s | kw, rng)  # noqa: E731
    lookups = [f"{r('lookup', n=i + 1)} {f}" for i, f in enumerate(facts)]
    return [r("open"), *lookups, *reasoning, r("close")]


@focus("reasoning_exposition")
def _expose(facts: list[str], reasoning: list[str], s: dict, rng: random.Random) -> list[str]:
    r = lambda name: render(f"focus.reasoning_exposition.{name}", s, rng)  # noqa: E731
    return [r("claim"), *(f"{r('premise')} {f}" for f in facts), *reasoning, r("close")]


@focus("argumentation")
def _argue(facts: list[str], reasoning: list[str], s: dict, rng: random.Random) -> list[str]:
    """Two cast members take sides, each citing facts; the computation settles it."""
    r = lambda name, **kw: render(f"focus.argumentation.{name}", s | kw, rng)  # noqa: E731
    half = max(1, len(facts) // 2)
    lines = [r("open"), r("side_a", fact_lc=lower_first(facts[0])), *facts[1:half]]
    if len(facts) > half:
        lines += [r("side_b", fact_lc=lower_first(facts[half])), *facts[half + 1 :]]
    else:
        lines.append(r("no_b"))
    return lines + [r("weigh"), *reasoning, r("verdict", verdict_tail=f": {s['answer']}.")]


@focus("creative_narrative")
def _narrate(facts: list[str], reasoning: list[str], s: dict, rng: random.Random) -> list[str]:
    r = lambda name: render(f"focus.creative_narrative.{name}", s, rng)  # noqa: E731
    return [r("open"), *facts, r("middle"), *reasoning, r("close")]


@focus("metacognitive")
def _reflect(facts: list[str], reasoning: list[str], s: dict, rng: random.Random) -> list[str]:
    r = lambda name: render(f"focus.metacognitive.{name}", s, rng)  # noqa: E731
    return [r("open"), *facts, r("doubt"), *reasoning, r("verify")]


def body_sentences(
    plan: Plan, labels: dict[str, str], rng: random.Random, slots: dict[str, str]
) -> list[str]:
    """The document's sentences: the content focus's frame around facts and reasoning, with the
    temporal, ambiguity and style dimensions applied."""
    facts = _fact_sentences(plan, labels, slots, rng)
    mode = labels["reasoning_explicitness"]
    reasoning = [x for c in plan.computations for x in _reason(c, mode, slots, rng)]
    lines = FOCUS[labels["content_focus"]](facts, reasoning, slots, rng)
    lines.insert(1, render("cast.detail", slots, rng))  # who the cast member is, in this document
    if labels["temporal_focus"] == "contemporary":
        lines.insert(0, render("temporal.contemporary", slots, rng))
    if plan.competing:
        lines += [plan.competing[0], render("ambiguity.competing_close", slots, rng)]
    if labels["style"] != "neutral":
        style = f"style.{labels['style']}"
        lines = [
            cap(render(f"{style}.open", slots, rng)),
            *lines,
            render(f"{style}.close", slots, rng),
        ]
    return [cap(x) for x in lines]


Layout = Callable[[Plan, list[str], dict[str, str], dict[str, str], random.Random], str]
FORMATS: dict[str, Layout] = {}


def layout_for(name: str) -> Callable[[Layout], Layout]:
    def register(fn: Layout) -> Layout:
        FORMATS[name] = fn
        return fn

    return register


@layout_for("structured_prose")
def _prose(plan: Plan, lines: list[str], labels: dict, s: dict, rng: random.Random) -> str:
    cut = max(1, len(lines) // 2)
    return f"{plan.title}\n\n" + " ".join(lines[:cut]) + "\n\n" + " ".join(lines[cut:])


@layout_for("dialogue")
def _dialogue(plan: Plan, lines: list[str], labels: dict, s: dict, rng: random.Random) -> str:
    """A transcript between the two cast members: a speaker's first turn is headed by the full
    name, later turns by the surname (as transcripts do) — still a name to copy."""
    members = plan.cast.members if plan.cast else []
    full, short = [s["a"], s["b"]], [mark("person", m.id, m.last) for m in members[:2]]
    seen: set[int] = set()

    def head(k: int) -> str:
        label = short[k] if k in seen else full[k]
        seen.add(k)
        return label

    turns = [f"{head(1)}: {s['question']}"]
    for i in range(0, len(lines), 2):
        turns.append(f"{head((i // 2) % 2)}: {' '.join(lines[i : i + 2])}")
    turns.append(f"{head(1)}: {render('format.dialogue_close', s, rng)}")
    return "\n".join(turns)


@layout_for("instructional")
def _steps(plan: Plan, lines: list[str], labels: dict, s: dict, rng: random.Random) -> str:
    steps = [f"{i + 1}. {x}" for i, x in enumerate(lines)]
    return render("format.instructional_head", s, rng) + "\n\n" + "\n".join(steps)


@layout_for("qa_direct")
def _qa(plan: Plan, lines: list[str], labels: dict, s: dict, rng: random.Random) -> str:
    return f"Q: {s['question']}\nA: {cap(s['answer'])}. " + " ".join(lines)


@layout_for("qa_rationale")
def _qa_why(plan: Plan, lines: list[str], labels: dict, s: dict, rng: random.Random) -> str:
    return f"Question: {s['question']}\nRationale: " + " ".join(lines) + f"\nAnswer: {s['answer']}"


@layout_for("notes")
def _notes(plan: Plan, lines: list[str], labels: dict, s: dict, rng: random.Random) -> str:
    """Fragments, not sentences: the facts' fragments and the bare working."""
    mode = labels["reasoning_explicitness"]
    bullets = [render("format.notes_source", s, rng)] + [f.fragment(rng) for f in plan.facts]
    for c in plan.computations:
        wrong = f" ({c.wrong} was wrong)" if mode == "self_corrective" and c.wrong else ""
        bullets.append(c.expression + wrong)
    if mode == "self_corrective" and not any(c.wrong for c in plan.computations):
        bullets.append("first guess reversed; corrected after checking the numbers")
    if mode == "probabilistic":
        bullets.append("odds stated from the register counts")
    if plan.competing:
        bullets.append("ambiguous, depends on the reading: " + plan.competing[0].split("? ", 1)[-1])
    if labels["temporal_focus"] == "contemporary":
        bullets.insert(0, f"as of {REFERENCE_YEAR}")
    if labels["style"] != "neutral":
        bullets.append(lower_first(render(f"style.{labels['style']}.close", s, rng)).rstrip("."))
    body = "\n".join(f"- {b}" for b in bullets)
    return f"notes: {plan.title.lower()}\n{body}\n- q: {s['question']} → {s['answer']}"


def layout(plan: Plan, labels: dict[str, str], rng: random.Random, world: World) -> str:
    """The document's text, marked: sentences laid out in the document's format."""
    slots = _slots(plan, labels, world)
    lines = body_sentences(plan, labels, rng, slots)
    return FORMATS[labels["format"]](plan, lines, labels, slots, rng)


def _shorten_repeats(marked: str, cast: Cast | None, rng: random.Random) -> str:
    """After a cast member's first full mention, later ones are often the surname alone, as a
    writer would put it; either way the name can only be copied from earlier in the document."""
    for m in cast.members if cast else []:
        full, short = mark("person", m.id, m.name), mark("person", m.id, m.last)
        head, sep, rest = marked.partition(full)
        if sep:
            parts = rest.split(full)
            rest = parts[0] + "".join(
                (short if rng.random() < 0.5 else full) + p for p in parts[1:]
            )
            marked = head + sep + rest
    return marked


def make_document(world: World, labels: dict[str, str], rng: random.Random) -> dict[str, Any]:
    plan = plan_document(world, labels, rng)
    text, spans = strip_marks(_shorten_repeats(layout(plan, labels, rng, world), plan.cast, rng))
    checks = list(plan.checks) + (plan.competing[1] if plan.competing else [])
    return {
        "text": text,
        "source": "synthetic",
        "labels": dict(labels),
        "spans": spans,
        "checks": checks,
        # The cast members this document names (the second only appears in some frames).
        "cast": {
            k: v
            for k, v in (plan.cast.entities() if plan.cast else {}).items()
            if any(sp["id"] == k for sp in spans)
        },  # fmt: skip
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
