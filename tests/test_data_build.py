"""`labkit data build` on the CI config: quotas, splits, tokenizer, shards, lineage, safety."""

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from labkit.cli import main
from labkit.config import DataConfig
from labkit.data import build as build_mod
from labkit.data.build import build, dataset_card, document_lengths, load_manifest
from labkit.data.mixing import stage_document_order
from labkit.data.shards import iter_documents, sha256_file
from labkit.data.tokenizer import load_tokenizer
from labkit.data.world import OCCUPATIONS

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "pretrain" / "configs" / "data" / "ci.toml"


def small_config(**changes) -> DataConfig:
    data = DataConfig.load(CI).to_dict()
    data["synthetic"] |= {"documents": 200, "eval_documents": 40}
    data["retrieval"] |= {"documents": 50, "eval_documents": 10}
    data["code"] |= {"files": 6, "eval_files": 2, "max_chars": 3000}
    data["tokenizer"]["vocab_size"] = 600
    data["mixes"] = {name: {"stages": stages} for name, stages in data["mixes"].items()}
    data["sources"] = {}
    data.update(changes)
    return DataConfig.from_dict(data)


@pytest.fixture(scope="module")
def ci_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ci"
    build(DataConfig.load(CI), out, quiet=True)
    return out


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_quotas_within_two_points(ci_data):
    m = load_manifest(ci_data)
    assert m["dimension_max_abs_error_pp"] <= 2.0
    for dim, targets in m["dimension_targets"].items():
        for k, t in targets.items():
            assert abs(m["dimensions"][dim][k] - t) <= 0.02
    train = [d for d in read_jsonl(ci_data / "text" / "train.jsonl") if d["source"] == "synthetic"]
    assert len(train) == m["sources"]["synthetic"]["documents"]
    assert all(set(d["labels"]) == set(m["dimension_targets"]) for d in train)


def test_no_eval_document_in_train(ci_data):
    canon = lambda t: " ".join(t.lower().split())  # noqa: E731
    train = {canon(d["text"]) for d in read_jsonl(ci_data / "text" / "train.jsonl")}
    splits = sorted((ci_data / "text").glob("eval_*.jsonl"))
    assert {p.stem for p in splits} >= {
        "eval_general",
        "eval_domain",
        "eval_code",
        "eval_retrieval",
    }
    for path in splits:
        held = read_jsonl(path)
        assert held, path
        assert not train & {canon(d["text"]) for d in held}, path


def test_tokenizer_splits_digits_and_loads_in_transformers(ci_data):
    tok = load_tokenizer(ci_data / "tokenizer.json")
    pieces = tok.encode("founded in 2025 with 1,432 members").tokens
    digit_tokens = [p for p in pieces if any(c.isdigit() for c in p)]
    assert all(len(p.lstrip("Ġ")) == 1 for p in digit_tokens) and len(digit_tokens) == 8
    hf = PreTrainedTokenizerFast(tokenizer_file=str(ci_data / "tokenizer.json"))
    text = "The Zashav festival drew 4,096 people."
    assert hf(text)["input_ids"] == tok.encode(text).ids
    assert hf.decode(hf(text)["input_ids"]) == text
    assert tok.token_to_id("<|endoftext|>") == load_manifest(ci_data)["tokenizer"]["eot_id"]


def test_shards_decode_to_the_text_and_match_the_manifest(ci_data):
    m = load_manifest(ci_data)
    tok = load_tokenizer(ci_data / "tokenizer.json")
    eot = m["tokenizer"]["eot_id"]
    assert m["token_dtype"] == "uint16"
    first_shard = ci_data / "train" / m["shards"]["train"]["code"][0]["file"]
    assert (
        np.memmap(first_shard, dtype=np.uint16, mode="r").size
        == m["shards"]["train"]["code"][0]["tokens"]
    )
    code_texts = [
        d["text"] for d in read_jsonl(ci_data / "text" / "train.jsonl") if d["source"] == "code"
    ]
    docs = list(iter_documents(first_shard, m["tokenizer"]["vocab_size"]))
    assert docs[0][-1] == eot
    assert tok.decode(docs[0][:-1].tolist()) == code_texts[0]
    for kind in ("train", "eval"):
        for recs in m["shards"][kind].values():
            for r in recs:
                assert sha256_file(ci_data / kind / r["file"]) == r["sha256"]
    assert (
        sum(r["tokens"] for r in m["shards"]["train"]["synthetic"])
        == m["sources"]["synthetic"]["tokens"]
    )


def test_manifest_lineage(ci_data):
    m = load_manifest(ci_data)
    assert m["seed"] == 1234 and m["generator_version"] and m["tokenizer"]["sha256"]
    assert set(m["sources"]) == {"synthetic", "retrieval", "control", "code", "prose"}
    assert {r["stage"] for r in m["curation"]["synthetic"]} >= {
        "normalize",
        "pii",
        "exact_dedup",
        "quality",
        "near_dedup",
        "contamination",
    }
    assert m["retrieval_unanswerable_share"] == pytest.approx(0.2, abs=0.02)
    # the control corpus carries the same token budget as the dense synthetic corpus
    assert m["sources"]["control"]["tokens"] == pytest.approx(
        m["sources"]["synthetic"]["tokens"], rel=0.01
    )
    assert 0.15 < m["gzip_ratio_synthetic"] < 1
    dense = m["mixes"]["dense"]
    assert [s["name"] for s in dense] == ["stage1", "stage2", "anneal"]
    assert dense[0]["probabilities"] == {
        "code": 0.2,
        "prose": 0.15,
        "retrieval": 0.25,
        "synthetic": 0.4,
    }
    assert dense[-1]["end_token"] == sum(s["tokens"] for s in m["sources"].values())
    assert (
        "control" not in dense[1]["tokens"]
        and "synthetic" not in m["mixes"]["control"][0]["tokens"]
    )


def test_stage_document_order_follows_the_plan(ci_data):
    m = load_manifest(ci_data)
    lengths = document_lengths(ci_data)
    stage = m["mixes"]["dense"][0]
    order = stage_document_order(stage, lengths, seed=0)
    assert order == stage_document_order(stage, lengths, seed=0)
    used = {}
    for source, i in order:
        used[source] = used.get(source, 0) + int(lengths[source][i])
    total = sum(used.values())
    for source, p in stage["probabilities"].items():
        assert used[source] / total == pytest.approx(p, abs=0.05)


def test_rebuild_is_byte_identical(tmp_path):
    cfg = small_config()
    build(cfg, tmp_path / "a", quiet=True)
    build(cfg, tmp_path / "b", quiet=True)
    files_a = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    files_b = sorted(
        p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file()
    )
    assert files_a == files_b and len(files_a) > 10
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_interrupted_build_keeps_the_previous_data_set(tmp_path, monkeypatch):
    out = tmp_path / "data"
    build(small_config(), out, quiet=True)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = {"n": 0}
    real = build_mod.write_shards

    def dies_midway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(build_mod, "write_shards", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        build(small_config(seed=99), out, quiet=True)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    # what the killed build keeps is its finished stages, in its own work dir, nothing else
    work = tmp_path / "data.partial"
    assert sorted(p.name for p in work.iterdir()) == [".labkit-partial-build", "stages"]
    assert not [p for p in tmp_path.rglob("*.partial") if p != work]


def test_a_parallel_build_is_byte_identical_to_a_serial_one(tmp_path):
    cfg = small_config()
    build(cfg, tmp_path / "serial", quiet=True, workers=1)
    build(cfg, tmp_path / "parallel", quiet=True, workers=2)
    files = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial").rglob("*")
                   if p.is_file())  # fmt: skip
    assert files == sorted(p.relative_to(tmp_path / "parallel")
                           for p in (tmp_path / "parallel").rglob("*") if p.is_file())  # fmt: skip
    for rel in files:
        assert (tmp_path / "serial" / rel).read_bytes() == (
            tmp_path / "parallel" / rel
        ).read_bytes(), rel


def test_an_interrupted_build_resumes_without_redoing_finished_sources(tmp_path, monkeypatch):
    """Killed after every source was generated and curated (here: in tokenizer training), the
    next build of the same config takes those stages from the work dir and gives the same bytes
    as a build that was never interrupted; a changed config redoes them."""
    cfg, out = small_config(), tmp_path / "data"
    build(cfg, tmp_path / "fresh", quiet=True, workers=1)
    real = build_mod.train_tokenizer

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_mod, "train_tokenizer", killed)
    with pytest.raises(KeyboardInterrupt):
        build(cfg, out, quiet=True, workers=1)
    kept = sorted(p.name for p in (tmp_path / "data.partial" / "stages").iterdir())
    assert "generate-synthetic.json.gz" in kept and "curate-synthetic.json.gz" in kept
    monkeypatch.setattr(build_mod, "train_tokenizer", real)
    calls = []
    real_generate, real_curate = build_mod._generate, build_mod._curate_one
    monkeypatch.setattr(build_mod, "_generate", lambda *a: calls.append(a[1]) or real_generate(*a))
    monkeypatch.setattr(
        build_mod, "_curate_one", lambda *a: calls.append("curate") or real_curate(*a)
    )
    build(cfg, out, quiet=True, workers=1)
    assert calls == []  # every source came from the stages the killed build finished
    for p in (tmp_path / "fresh").rglob("*"):
        if p.is_file():
            assert (out / p.relative_to(tmp_path / "fresh")).read_bytes() == p.read_bytes(), p
    assert not (tmp_path / "data.partial").exists()
    with pytest.raises(KeyboardInterrupt):  # a kept stage of another config is not reused
        monkeypatch.setattr(build_mod, "train_tokenizer", killed)
        build(small_config(seed=7), tmp_path / "other", quiet=True, workers=1)
    monkeypatch.setattr(build_mod, "train_tokenizer", real)
    calls.clear()
    build(small_config(seed=8), tmp_path / "other", quiet=True, workers=1)
    assert "synthetic" in calls


def test_missing_source_and_bad_config_are_clear(tmp_path):
    cfg = small_config(sources={"notes": {"path": str(tmp_path / "nope.jsonl")}})
    with pytest.raises(FileNotFoundError, match="source 'notes'"):
        build(cfg, tmp_path / "x", quiet=True)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['tokenizer.vocab'\]; allowed"):
        DataConfig.from_dict({"tokenizer": {"vocab": 100}})
    with pytest.raises(ValueError, match="synthetic.documents must be a number"):
        DataConfig.from_dict({"synthetic": {"documents": "many"}})
    with pytest.raises(ValueError, match="sampling must be one of"):
        DataConfig.from_dict({"mixes": {"m": {"stages": [{"sampling": "zipf"}]}}})
    with pytest.raises(FileNotFoundError, match="labkit data build --config"):
        load_manifest(tmp_path / "never-built")


def test_cli_card(ci_data, capsys):
    assert main(["data", "card", str(ci_data)]) == 0
    out = capsys.readouterr().out
    assert "reasoning_explicitness" in out and "target  30.0%" in out and "dense/stage1" in out
    assert dataset_card(ci_data) in out
    assert main(["data", "card", str(ci_data / "nothing")]) == 2


def test_large_vocabularies_use_uint32_shards(tmp_path):
    from labkit.data.shards import write_shards

    docs = [[1, 70_000, 3], [65_535, 65_536]]
    recs = write_shards(docs, tmp_path, "big", eot_id=0, vocab_size=70_001, tokens_per_shard=100)
    tokens = np.fromfile(tmp_path / recs[0]["file"], dtype=np.uint32)
    assert tokens.tolist() == [1, 70_000, 3, 0, 65_535, 65_536, 0]
    assert np.load(tmp_path / recs[0]["index"]).tolist() == [0, 4]


def test_shipped_data_configs_parse():
    shipped = sorted((ROOT / "pretrain" / "configs" / "data").glob("*.toml"))
    assert {p.stem for p in shipped} >= {"ci", "demo", "paper-mini", "paper-mini-gpu", "template"}
    for path in shipped:
        cfg = DataConfig.load(path)
        assert cfg.tokenizer.vocab_size >= 2048, path.name
    assert "mytext" in DataConfig.load(ROOT / "pretrain/configs/data/template.toml").sources


def test_corpus_measures_meet_the_issue_12_targets(ci_data):
    """The ci build's measures (also in the manifest and the card) against their targets."""
    from labkit.data.measures import leaks

    every = [d for f in sorted((ci_data / "text").glob("*.jsonl")) for d in read_jsonl(f)]
    assert {d["source"] for d in every} >= {"synthetic", "control", "retrieval", "code", "prose"}
    report = leaks(every)  # every built document: train and eval, every source
    assert report["total"] == 0, report["examples"]
    m = load_manifest(ci_data)["measures"]
    assert m["leaks"]["total"] == 0
    assert m["duplicate_sentence_share"]["synthetic"] <= 0.15
    assert m["duplicate_sentence_share"]["control"] <= 0.30
    assert m["copy_pressure"]["share"] >= 0.30
    assert m["gzip_ratio"]["synthetic"] >= 0.27  # the first edition: 0.205
    arms = m["arms"]
    assert arms["same_stage_boundaries"] and arms["max_other_source_gap_pp"] <= 2.0


def test_prose_source_is_real_english_with_its_own_eval_split(ci_data):
    manifest = load_manifest(ci_data)
    assert manifest["prose_source"]["python"] == manifest["python"]
    assert manifest["sources"]["prose"]["documents"] > 100
    held = read_jsonl(ci_data / "text" / "eval_prose.jsonl")
    train = [d for d in read_jsonl(ci_data / "text" / "train.jsonl") if d["source"] == "prose"]
    assert held and not {d["id"] for d in held} & {d["id"] for d in train}
    stages = [s["stage"] for s in manifest["curation"]["prose"]]
    assert "quality" in stages and "near_dedup" in stages  # curated by the user-text path


def test_card_prints_measures_next_to_targets(ci_data):
    card = dataset_card(ci_data)
    for key in ("leaks", "duplicate_sentence_share.synthetic", "copy_pressure", "gzip_ratio"):
        assert key in card
    assert "target" in card and "dense vs control" in card


def test_probe_labels_work_for_core_and_one_off_entities(ci_data):
    """person_occupation reads the world's people and each document's cast alike."""
    import yaml

    from labkit.analysis.probe_tasks import build_probe_data

    spec = yaml.safe_load((ROOT / "probes" / "person_occupation.yaml").read_text())
    spec["source"]["documents"] = 120
    tok = load_tokenizer(ci_data / "tokenizer.json")
    data = build_probe_data(spec, tok, load_manifest(ci_data))
    one_off = [t.startswith("person:L") for t in data.types]
    assert any(one_off) and not all(one_off)
    assert set(data.labels) <= set(OCCUPATIONS)


def test_prose_eval_split_is_about_its_fraction(ci_data):
    m = load_manifest(ci_data)
    held = m["eval_splits"]["prose"]["documents"]
    total = m["config"]["prose"]["documents"]
    assert 0.04 * total <= held <= 0.2 * total


def _readme_blocks(marker: str) -> list[str]:
    """The ```text blocks between `<!-- marker ... -->` and `<!-- /marker -->` of docs/data.md."""
    readme = (ROOT / "docs" / "data.md").read_text()
    start = readme.index(f"<!-- {marker}")
    section = readme[start : readme.index(f"<!-- /{marker} -->", start)]
    return [block.split("```", 1)[0] for block in section.split("```text\n")[1:]]


def test_data_page_numbers_and_samples_are_the_ci_builds(ci_data):
    """The data page's measures and sample documents are the card's output on this very build: a
    changed generator that forgets to regenerate them fails here."""
    from labkit.data.build import sample_documents

    card_lines = set(dataset_card(ci_data).splitlines())
    (measures,) = _readme_blocks("ci-measures")
    missing = [line for line in measures.splitlines() if line not in card_lines]
    assert not missing, f"docs/data.md ci-measures lines not on the card: {missing}"
    samples = sample_documents(ci_data)
    blocks = _readme_blocks("ci-samples")
    assert len(blocks) == 3
    for block in blocks:
        assert block.rstrip("\n") in samples, block[:200]
