"""Each curation stage on small fixtures with duplicates, near-duplicates, PII and junk."""

import json

import pytest

from labkit.config import CurationSection
from labkit.data.curation import (
    curate,
    load_text_source,
    normalize,
    redact_pii,
)

PROSE = (
    "The harbour town kept careful records of every ship that entered the bay during the long "
    "winter, noting the cargo, the crew and the weather on each arrival. Clerks copied the "
    "ledgers twice so that a fire could not erase the memory of the port, and scholars still "
    "read them today to learn how the town traded with its neighbours across the narrow sea."
)
OTHER = (
    "A small choir rehearsed in the old mill every Thursday evening, singing folk songs that the "
    "grandparents of the village had taught them, and the sound carried across the frozen river "
    "to farms where families opened their windows to listen despite the bitter cold of January."
)


def doc(text, i, source="web"):
    return {"text": text, "source": source, "id": f"{source}-{i}"}


def run(docs, **kw):
    cfg = CurationSection(min_words=20)
    kept, reports = curate(docs, cfg, **kw)
    return kept, {r.stage: r for r in reports}


def test_exact_duplicates_keep_the_first_copy():
    docs = [doc(PROSE, 0), doc(OTHER, 1), doc("  " + PROSE.upper() + "\n", 2)]
    kept, rep = run(docs)
    assert [d["id"] for d in kept] == ["web-0", "web-1"]
    assert (rep["exact_dedup"].docs_in, rep["exact_dedup"].docs_out) == (3, 2)


def test_near_duplicates_are_removed_and_distinct_texts_kept():
    near = PROSE.replace("careful", "meticulous")
    kept, rep = run([doc(PROSE, 0), doc(near, 1), doc(OTHER, 2)])
    assert [d["id"] for d in kept] == ["web-0", "web-2"]
    assert rep["near_dedup"].docs_out == 2


def test_pii_is_redacted_and_numbers_are_not():
    text = (
        "Write to ada.lovelace@example.org or call (555) 123-4567 or +1 555-987-6543. The server at "
        "192.168.10.4 stores SSN 123-45-6789. The town was founded in 1432 and has 12,400 people; "
        "the ratio is 3.14 and the date 2024-05-01."
    )
    out = redact_pii({"text": text})["text"]
    for secret in (
        "ada.lovelace@example.org",
        "123-4567",
        "987-6543",
        "192.168.10.4",
        "123-45-6789",
    ):
        assert secret not in out
    for placeholder in ("<EMAIL>", "<PHONE>", "<IP>", "<SSN>"):
        assert placeholder in out
    for kept in ("1432", "12,400", "3.14", "2024-05-01"):
        assert kept in out
    assert out.count("<PHONE>") == 2


def test_pii_redaction_keeps_spans_aligned():
    text = "Mail bob@example.com about Kyfe today."
    start = text.index("Kyfe")
    out = redact_pii({"text": text, "spans": [{"start": start, "end": start + 4, "type": "city"}]})
    span = out["spans"][0]
    assert out["text"][span["start"] : span["end"]] == "Kyfe"


def test_normalization_nfkc_and_control_characters():
    text = "The ﬁrst ﬂoor covers 12 km² \x07and\u200b more."
    start = text.index("more")
    out = normalize({"text": text, "spans": [{"start": start, "end": start + 4, "type": "x"}]})
    assert out["text"] == "The first floor covers 12 km2 and more."
    span = out["spans"][0]
    assert out["text"][span["start"] : span["end"]] == "more"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("1234 5678 9012 3456 " * 10 + PROSE, "digits"),
        ("#### $$$$ &&&& @@@@ !!!! " * 20 + PROSE, "non_alnum"),
        (
            " ".join(f"https://spam.example/{i}/buy-now-cheap" for i in range(20)) + " " + PROSE,
            "urls",
        ),
        ("too short to keep", "length"),
        (" ".join(["a b c"] * 40), "word_length"),
        (" ".join(["incomprehensibilities"] * 40), "word_length"),
    ],
)
def test_quality_filters(text, reason):
    kept, rep = run([doc(text, 0), doc(PROSE, 1)])
    assert [d["id"] for d in kept] == ["web-1"]
    assert rep["quality"].detail.get(reason) == 1


def test_quality_filters_only_apply_to_chosen_sources():
    junk = "1234 5678 9012 3456 " * 20
    kept, _ = run([doc(junk, 0, "code"), doc(junk + " x", 1, "web")], quality_sources={"web"})
    assert [d["source"] for d in kept] == ["code"]


def test_contamination_13_grams():
    task = "what is the name of the harbour town that kept careful records of every ship"
    tail = " ".join(PROSE.split()[8:20])  # 12 words of PROSE
    kept, rep = run([doc(PROSE, 0), doc(OTHER, 1)], contamination_texts=[tail])
    assert len(kept) == 2  # a 12-word overlap is not contamination
    kept, rep = run(
        [doc(PROSE, 0), doc(OTHER, 1)], contamination_texts=[task, " ".join(PROSE.split()[3:16])]
    )
    assert [d["id"] for d in kept] == ["web-1"]
    assert rep["contamination"].docs_out == 1


def test_held_out_references_remove_train_copies():
    kept, _ = run([doc(PROSE, 0), doc(OTHER, 1)], reference_texts=[PROSE.replace("long", "hard")])
    assert [d["id"] for d in kept] == ["web-1"]


def test_local_sources_load_and_errors_name_the_source(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in (PROSE, OTHER)))
    docs = load_text_source("mine", str(tmp_path / "a.jsonl"), text_field="body")
    assert [d["text"] for d in docs] == [PROSE, OTHER] and docs[0]["source"] == "mine"
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "one.txt").write_text(PROSE)
    (folder / "two.txt").write_text(OTHER)
    assert len(load_text_source("txt", str(folder))) == 2
    with pytest.raises(FileNotFoundError, match="source 'gone'"):
        load_text_source("gone", str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="source 'mine': no field 'text'"):
        load_text_source("mine", str(tmp_path / "a.jsonl"))
    with pytest.raises(ValueError, match="give `path`"):
        load_text_source("nothing")
