"""The synthetic world's documents: every number true in the world, every label visible."""

import datetime as dt
import re
import statistics

import pytest

from labkit.data.control import generate_control, mentioned_entities
from labkit.data.documents import (
    DIMENSIONS,
    generate_documents,
    quota_counts,
    realized_distribution,
)
from labkit.data.measures import copy_pressure, duplicate_sentence_share, leaks
from labkit.data.retrieval import NOT_IN_PASSAGE, generate_retrieval
from labkit.data.world import build_world


@pytest.fixture(scope="module")
def world():
    return build_world(11)


@pytest.fixture(scope="module")
def docs(world):
    return generate_documents(world, 600, 11)


def world_value(world, ref):
    kind, ident, attr = ref
    entity = getattr(world, kind)[int(ident)]
    if attr == "year":
        return int(entity.date[:4])
    return getattr(entity, attr)


def recompute(world, check):
    """Each operation written out again, independently of the generator."""
    op, refs = check["op"], check.get("refs", [])
    vals = [world_value(world, r) for r in refs]
    if op == "sub":
        return abs(vals[0] - vals[1])
    if op == "argmax":
        return refs[max(range(len(vals)), key=lambda i: vals[i])]
    if op == "convert":
        return round(vals[0] * check["factor"] + check["offset"], check["digits"])
    if op == "div":
        return round(vals[0] / vals[1], 1)
    if op == "mul":
        return vals[0] * check["constant"]
    if op == "days":
        a, b = sorted(dt.date.fromisoformat(v) for v in vals)
        return (b - a).days
    if op == "since":
        return check["now"] - vals[0]
    if op == "threshold":
        return vals[0] < check["threshold"]
    if op == "prob":
        staff = [p for p in world.people if p.employer == check["org"]]
        k = sum(p.occupation == check["occupation"] for p in staff)
        assert (k, len(staff)) == (check["k"], check["n"])
        return round(100 * k / len(staff))
    if op == "competing":
        kind, (x, y), (a1, a2) = check["kind"], check["ids"], check["attrs"]
        ex, ey = getattr(world, kind)[x], getattr(world, kind)[y]
        first = x if getattr(ex, a1) > getattr(ey, a1) else y
        # "founded" reads as age: the earlier founding wins
        if a2 == "founded":
            second = x if getattr(ex, a2) < getattr(ey, a2) else y
        else:
            second = x if getattr(ex, a2) > getattr(ey, a2) else y
        assert first != second  # the readings really compete
        return [first, second]
    raise AssertionError(f"unknown op {op}")


def test_every_computation_is_true_in_the_world(world, docs):
    n_checks = 0
    for d in docs:
        assert d["checks"], d["text"]
        for check in d["checks"]:
            assert recompute(world, check) == check["result"], (check, d["text"])
            n_checks += 1
            if check["op"] in ("sub", "convert", "div", "mul", "days", "since", "prob"):
                results = [s for s in d["spans"] if s["type"] == "number" and s["id"] == "result"]
                assert str(check["result"]) in {s.get("attr") for s in results}, d["text"]
    assert n_checks > 1000


def test_every_stated_world_number_is_true(world, docs):
    seen = 0
    for d in docs:
        for s in d["spans"]:
            if s["type"] != "number" or s["id"] == "result":
                continue
            kind, ident, attr = s["id"].split(".")
            truth = world_value(world, (kind, ident, attr))
            assert s["attr"] == str(truth)
            surface = d["text"][s["start"] : s["end"]]
            if attr not in ("date",):
                assert float(surface.replace(",", "")) == pytest.approx(float(truth))
            seen += 1
    assert seen > 3000


def test_entity_spans_point_at_the_entity(world, docs):
    kinds = {"city": "cities", "person": "people", "organisation": "organisations"}
    kinds |= {"element": "elements", "species": "species", "event": "events"}
    for d in docs[:200]:
        for s in d["spans"]:
            if s["type"] in kinds and s["id"] in d["cast"]:  # a one-off entity of this document
                name = d["cast"][s["id"]]["name"]  # in full, or a person's surname after the first
                assert d["text"][s["start"] : s["end"]] in {name, name.split()[-1]}
            elif s["type"] in kinds:
                entity = getattr(world, kinds[s["type"]])[int(s["id"])]
                surface = d["text"][s["start"] : s["end"]]
                name = getattr(entity, "first", None) if s["type"] == "person" else None
                assert surface.lower() in {entity.name.lower(), (name or "").lower()}


def test_quotas_are_exact(docs):
    realized = realized_distribution(docs)
    for dim, targets in DIMENSIONS.items():
        for k, t in targets.items():
            assert abs(realized[dim][k] - t) <= 1 / len(docs) + 1e-9
    assert quota_counts(7, {"a": 0.5, "b": 0.5}) in ({"a": 4, "b": 3}, {"a": 3, "b": 4})


def by(docs, dim, value):
    return [d for d in docs if d["labels"][dim] == value]


def test_labels_change_the_text(docs):
    for d in by(docs, "reasoning_explicitness", "self_corrective"):
        assert re.search(
            r"wrong|mistake|does not check out|corrects that|fixes the error|corrected|cannot be right|say otherwise|slip|error|first hunch|first guess|opposite answer|other way",
            d["text"],
        ), d["text"]
    for d in by(docs, "reasoning_explicitness", "probabilistic"):
        assert "%" in d["text"] and re.search(r"\d+ in \d+|odds", d["text"]), d["text"]
    for d in by(docs, "ambiguity", "high"):
        assert re.search(r"depends|reading", d["text"]), d["text"]
    for d in by(docs, "temporal_focus", "contemporary"):
        assert "2025" in d["text"]
    for d in by(docs, "format", "dialogue"):
        turns = [line for line in d["text"].splitlines() if re.match(r"^\w[\w ]*: ", line)]
        # two speakers: full name on the first turn, surname afterwards
        assert len(turns) >= 3 and len({t.split(":")[0].split()[-1] for t in turns}) == 2
    for d in by(docs, "format", "notes"):
        lines = d["text"].splitlines()
        assert sum(line.startswith("- ") for line in lines) >= len(lines) - 1
    for d in by(docs, "format", "instructional"):
        assert re.search(r"^1\. ", d["text"], re.M) and re.search(r"^2\. ", d["text"], re.M)
    for d in by(docs, "format", "qa_direct"):
        assert d["text"].startswith("Q: ") and "\nA: " in d["text"]
    for d in by(docs, "format", "qa_rationale"):
        assert all(k in d["text"] for k in ("Question:", "Rationale:", "Answer:"))
    markers = {
        "positive": r"encouragingly|good news|happily|pleasingly|neatly|proud|fine work|a lot to like|happy case|rewarding|loves|enjoys|delighted|satisfying|tidy answer|good work|fits together|pleased|got it right|pays off|credit for",
        "negative": r"unfortunately|frankly|sadly|regrettably|patchy|unflattering|disappointing|fall short|expected better|blunt|poorly kept|deserves praise|stands up to scrutiny|poor record|flatters|reflects well|impresses|little else|not much|nothing here|complain",
        "empathetic": r"that is okay|patient with yourself|you are not alone|natural to double-check|do not worry|no need to worry|relax|many readers|plenty of people|most of us|be kind to yourself|take a break|no rush|going back over it",
        "figurative": r"like stones|lanterns|orchard|wet clay|like a tide|like a map|like a river|like a lamp|quiet sea|like dust|like a lock|ember|like a bell|bird on a wire",
    }
    for style, pattern in markers.items():
        for d in by(docs, "style", style):
            assert re.search(rf"\b({pattern})\b", d["text"], re.I), d["text"]
    every_marker = rf"\b({'|'.join(markers.values())})\b"
    for d in by(docs, "style", "neutral"):
        assert not re.search(every_marker, d["text"], re.I), d["text"]
    for d in by(docs, "content_focus", "argumentation"):  # an argument has two sides, named
        if d["labels"]["format"] == "notes":
            continue
        cast = [c["name"] for c in d["cast"].values()]
        assert all(name in d["text"] for name in cast) and re.search(
            r"argues|insists|maintains|contends|key|decisive|central|opens|starts|leads", d["text"]
        )


def test_density_and_complexity_scale(docs):
    def world_numbers(d):
        return sum(s["type"] == "number" and s["id"] != "result" for s in d["spans"])

    means = {
        k: statistics.mean(map(world_numbers, by(docs, "factual_density", k)))
        for k in ("low", "moderate", "high")
    }
    assert means["low"] < means["moderate"] < means["high"]
    checks = {
        k: statistics.mean(len(d["checks"]) for d in by(docs, "conceptual_complexity", k))
        for k in ("basic", "intermediate", "advanced")
    }
    assert checks["basic"] < checks["intermediate"] < checks["advanced"]


def test_generation_is_deterministic(world):
    a = generate_documents(world, 50, 3)
    b = generate_documents(build_world(11), 50, 3)
    assert a == b
    assert a != generate_documents(world, 50, 4)


def test_retrieval_documents(world):
    docs = generate_retrieval(world, 200, 5, unanswerable=0.2)
    assert sum(not d["answerable"] for d in docs) == 40
    for d in docs:
        passage = d["text"].split("\nQuestion: ")[0]
        answer_span = [s for s in d["spans"] if s["type"] == "answer"][0]
        assert d["text"][answer_span["start"] : answer_span["end"]] == d["answer"]
        if d["answerable"]:
            assert d["answer"] in passage and d["answer"] != NOT_IN_PASSAGE
            assert d["text"][d["evidence_start"] :].startswith(d["answer"])
        else:
            assert d["answer"] == NOT_IN_PASSAGE
            kind, ident, attr = d["entity"]
            entity = getattr(world, kind)[ident]
            # Nothing states the value for this entity: no marked number, and no sentence naming
            # the entity contains the value (a distractor sentence about another entity may).
            assert not any(s.get("id") == f"{kind}.{ident}.{attr}" for s in d["spans"])
            value = str(getattr(entity, attr))
            about = [x for x in re.split(r"(?<=\.) ", passage) if entity.name in x]
            assert not any(value in x.replace(",", "") for x in about), passage


def test_control_corpus_carries_the_same_facts_at_the_same_budget(world, docs):
    control = generate_control(world, docs, 11)
    assert sum(len(d["text"]) for d in control) >= sum(len(d["text"]) for d in docs)
    dense_entities = set(mentioned_entities(docs))
    assert {tuple(d["entity"]) for d in control} <= dense_entities
    assert len({tuple(d["entity"]) for d in control}) >= 0.9 * len(dense_entities)
    for d in control[:50]:
        assert "Tags:" not in d["text"] and "All rights reserved" not in d["text"]  # no boilerplate
        assert any(s["type"] == "number" for s in d["spans"]) or d["entity"][0] in ("species",)

    # Low density: fewer world numbers per character than the dense corpus; varied, not stock.
    def numbers_per_kchar(ds):
        n = sum(s["type"] == "number" and s["id"] != "result" for d in ds for s in d["spans"])
        return 1000 * n / sum(len(d["text"]) for d in ds)

    assert numbers_per_kchar(control) < 0.5 * numbers_per_kchar(docs)
    assert duplicate_sentence_share(control) <= 0.30
    assert leaks(control)["total"] == 0


def test_no_internal_markup_in_any_generated_text(world, docs):
    """Nested marks (an answer that is an entity name) used to leak `kind|id|` into answers."""
    retrieval = generate_retrieval(world, 200, 5)
    control = generate_control(world, docs[:100], 11)
    report = leaks(docs + retrieval + control)
    assert report["total"] == 0, report["examples"]
    compare = [
        s for d in docs for s in d["spans"] if s["type"] == "answer" and s["id"] == "compare"
    ]
    assert compare  # nested answer spans still exist, and hold the entity's name


def test_yes_no_balanced_and_concepts_fixed_per_world(world, docs):
    checks = [c for d in docs for c in d["checks"] if c["op"] == "threshold"]
    assert len(checks) > 50
    yes = sum(c["answer"] == "yes" for c in checks) / len(checks)
    assert 0.35 < yes < 0.65
    assert {c["threshold"] for c in checks} == {world.concepts["early_element_before"]}


def test_quantities_compared_are_commensurable(docs):
    for d in docs:
        assert not re.search(r"per kilogram of|per year of life|residents per kg", d["text"])
        for c in d["checks"]:
            if c["op"] == "div":  # a ratio of like quantities, or a density (count per area)
                attrs = {ref[2] for ref in c["refs"]}
                assert attrs in ({"mass_kg"}, {"population", "area_km2"}), c


def test_cast_names_are_one_off_and_repeated(world, docs):
    """Each document's cast is its own: names occur in one document and recur within it."""
    cp = copy_pressure(docs)
    assert cp["share"] >= 0.30
    names = [c["name"] for d in docs for c in d["cast"].values()]
    assert len(set(names)) == len(names)
    world_names = {p.name for p in world.people}
    assert not world_names & set(names)
    for d in docs[:100]:
        if d["labels"]["format"] != "notes":  # notes name their source once
            main = next(iter(d["cast"]))  # the document's main cast member
            assert sum(s["id"] == main for s in d["spans"]) >= 2
            assert d["cast"][main]["name"] in d["text"]  # named in full at least once


def test_record_logs_list_items_twice_in_the_same_order(world):
    """The check list of a record log repeats its arrival list verbatim, its items are distinct
    words (so a copy has one earlier occurrence to follow), and the generator is deterministic."""
    from labkit.data.records import generate_records, item_words

    docs = generate_records(world, 200, seed=7)
    assert docs == generate_records(world, 200, seed=7)
    assert generate_records(world, 5, seed=7) == docs[:5]  # each document has its own generator
    assert len(item_words()) == 1500 and all(w.isalpha() for w in item_words())
    for doc in docs:
        items = doc["items"]
        assert 12 <= len(items) <= 30 and len(set(items)) == len(items)
        lines = doc["text"].splitlines()
        listed = ", ".join(items)
        assert lines[1].endswith(f": {listed}.") and lines[-1].endswith(f": {listed}.")
    assert len({tuple(d["items"]) for d in docs}) == len(docs)
