"""Your own corpus end to end: real prose shipped with Python, brought as a jsonl with a
label field, built with every built-in source disabled; curation reports (and warns about) what it
removes; a short run trains on it; a `label_field` probe, a perplexity eval on its own split and a
`labkit export` folder that a transformers pipeline generates from."""

import json
import math
from pathlib import Path

import pytest
from conftest import ROOT, run

from labkit.cli import figures_out, main, milestone_label
from labkit.config import CurationSection, DataConfig
from labkit.data.build import build, dataset_card
from labkit.data.curation import curate, curation_warnings
from labkit.data.prose import generate_prose
from labkit.eval.tasks import build_tasks

OWN_TEXT_ONLY = {
    "synthetic": {"enabled": False},
    "retrieval": {"enabled": False},
    "control": {"enabled": False},
    "code": {"enabled": False},
    "prose": {"enabled": False},
}


def write_prose_jsonl(path: Path, limit: int) -> list[dict]:
    """Python's own prose as a user would bring it: text, an id and a label field."""
    docs = generate_prose(limit)
    rows = [
        {
            "id": d["id"],
            "text": d["text"],
            "kind": "topic" if d["id"].startswith("prose-topic-") else "docstring",
            "origin": d["origin"],
            # a span label from character offsets: the first word, and whether it is capitalised
            "spans": [
                {"start": 0, "end": len(first), "type": "word", "capital": first[:1].isupper()}
            ],
        }
        for d in docs
        for first in [d["text"].split()[0]]
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def own_config(jsonl: Path, **curation) -> DataConfig:
    return DataConfig.from_dict(
        {
            "name": "own",
            **OWN_TEXT_ONLY,
            "sources": {"mine": {"path": str(jsonl), "eval_fraction": 0.1}},
            "curation": {"min_words": 10, **curation},
            "tokenizer": {"vocab_size": 1024},
        }
    )


# ----------------------------------------------------------------------------- fast pieces
def test_builtin_sources_can_all_be_disabled_and_errors_name_the_cause():
    cfg = DataConfig.from_dict({**OWN_TEXT_ONLY, "sources": {"m": {"path": "x.jsonl"}}})
    assert cfg.source_names() == ["m"]
    with pytest.raises(ValueError, match="every source is disabled"):
        DataConfig.from_dict(OWN_TEXT_ONLY).source_names()
    with pytest.raises(ValueError, match="synthetic.documents"):
        DataConfig.from_dict({"synthetic": {"documents": 0}})
    # disabled: documents may be 0
    DataConfig.from_dict({"synthetic": {"enabled": False, "documents": 0}})


def test_planted_contamination_is_caught_and_explained():
    task = (
        "what is the capital of the kingdom of lorem according to the old ledger of ipsum records"
    )
    clean = [dict(d, source="mine") for d in generate_prose(20)]
    planted = {"id": "leak", "source": "mine", "text": "Intro words here. " + task + " and more."}
    kept, reports = curate(clean + [planted], CurationSection(min_words=1), (), [task], set())
    assert "leak" not in {d["id"] for d in kept} and len(kept) == 20
    stage = next(r for r in reports if r.stage == "contamination")
    assert stage.docs_in - stage.docs_out == 1
    assert stage.examples[0]["id"] == "leak"
    assert "what is the capital" in stage.examples[0]["reason"]
    # 1 of 21 removed (< 10 %): no warning; a stage removing more names itself and its reason
    assert curation_warnings("mine", [vars(r) for r in reports]) == []
    heavy = [{"stage": "contamination", "docs_in": 10, "docs_out": 5, "detail": {},
              "examples": [{"id": "x", "reason": "shares the 13-gram 'a b'", "text": ""}]}]  # fmt: skip
    (line,) = curation_warnings("mine", heavy)
    assert "'contamination' removed 5 of 10 mine documents (50%)" in line and "13-gram" in line


def test_extra_fields_and_ids_travel_into_the_document_index(tmp_path):
    rows = write_prose_jsonl(tmp_path / "mine.jsonl", 60)
    out = tmp_path / "data"
    manifest = build(own_config(tmp_path / "mine.jsonl"), out, quiet=True)
    assert set(manifest["sources"]) == {"mine"}
    assert set(manifest["eval_splits"]) == {"mine"}
    index = manifest["document_index"]["train"]["mine"]
    docs = [json.loads(x) for x in (out / "train" / index).read_text().splitlines()]
    assert len(docs) == manifest["sources"]["mine"]["documents"]
    by_id = {r["id"]: r for r in rows}
    for d in docs:
        assert d["fields"] == {"kind": by_id[d["id"]]["kind"], "origin": by_id[d["id"]]["origin"]}
    text = [json.loads(x) for x in (out / "text" / "train.jsonl").read_text().splitlines()]
    assert [d["id"] for d in text] == [d["id"] for d in docs]
    for d in text:  # the spans stay on their words through curation
        (span,) = d["spans"]
        assert d["text"][span["start"] : span["end"]] == d["text"].split()[0]
    # a span probe label taken from the user's offsets
    from labkit.analysis.probe_tasks import build_probe_data
    from labkit.data.tokenizer import load_tokenizer

    spec = {"name": "capital", "source": {"kind": "data", "split": "train"},
            "positions": {"kind": "span", "type": "word"},
            "label": {"kind": "label_field", "field": "capital"}, "control": "entity"}  # fmt: skip
    data = build_probe_data(spec, load_tokenizer(out / "tokenizer.json"), manifest, out)
    assert data.n_examples == len(text)
    assert sorted(set(data.labels.tolist())) == [False, True]
    # the offline suite needs the world's splits: each task is skipped with a note, and with
    # none buildable the error names what to run instead
    with pytest.raises(ValueError, match="labkit eval perplexity --split"):
        build_tasks(out, tmp_path / "tasks")


def test_milestone_names_read_as_token_counts():
    assert milestone_label("tokens_000003010560") == "3.01M tokens"
    assert milestone_label("final") == "final"


# ----------------------------------------------------------------------------- end to end
def test_own_prose_end_to_end(tmp_path, capsys):
    rows = write_prose_jsonl(tmp_path / "mine.jsonl", 0)  # all of it (~800 documents)
    task_file = tmp_path / "tasks.jsonl"  # an eval task text a user keeps out of train
    task_file.write_text(json.dumps({"question": rows[3]["text"][:400]}) + "\n")
    data = tmp_path / "data"
    manifest = build(own_config(tmp_path / "mine.jsonl", contamination_files=[str(task_file)]),
                     data, quiet=True)  # fmt: skip
    report = manifest["curation"]["mine"]
    n_in, n_out = report[0]["docs_in"], report[-1]["docs_out"]
    assert n_in > 600 and (n_in - n_out) / n_in < 0.10, report
    contamination = next(r for r in report if r["stage"] == "contamination")
    assert rows[3]["id"] in [e["id"] for e in contamination["examples"]]  # planted, caught
    card = dataset_card(data)
    assert "contamination: removed" in card and rows[3]["id"] in card
    # no synthetic text, so no copy pressure to measure: n/a, not a missed target
    (pressure,) = [line for line in card.splitlines() if line.strip().startswith("copy_pressure")]
    assert pressure.endswith("n/a")
    assert not [line for line in card.splitlines() if line.endswith(" MISSED")], card

    run_dir = tmp_path / "run"
    overrides = ["train.tokens=6144", "train.seq_len=64", "train.batch_tokens=512",
                 "train.micro_batch=8", "checkpoint.every_tokens=3072", "eval.every_steps=6",
                 "model.n_layers=2", "checkpoint.resume_every_steps=100"]  # fmt: skip
    args = ["--run-dir", str(run_dir)]
    for o in overrides:
        args += ["--set", o]
    run(args, data, torchrun=False, timeout=600)

    probes = tmp_path / "probes"
    probes.mkdir()
    (probes / "kind.yaml").write_text(
        "name: kind\nsource: {kind: data, split: train, documents: 200}\n"
        "positions: {kind: document_mean}\nlabel: {kind: label_field, field: kind}\n"
        "task: classification\ncontrol: document\n"
    )
    probe_json = tmp_path / "probe.json"
    assert main(["probe", "--run", str(run_dir), "--milestones", "last", "--layer", "all",
                 "--target", "kind", "--probes-dir", str(probes), "--json", str(probe_json)]) == 0  # fmt: skip
    assert "6.14K tokens" in capsys.readouterr().out
    probe_rows = json.loads(probe_json.read_text())
    assert probe_rows and all(r["examples"] <= 200 for r in probe_rows)
    assert max(r["accuracy"] for r in probe_rows) > 0.5

    assert main(["eval", "perplexity", "--run", str(run_dir), "--split", "mine",
                 "--milestones", "first,last"]) == 0  # fmt: skip
    ppl = json.loads((run_dir / "evals" / "perplexity_mine.json").read_text())
    assert len(ppl) == 2 and all(math.isfinite(r["perplexity"]) for r in ppl)
    assert ppl[-1]["loss"] < ppl[0]["loss"]

    last = sorted((run_dir / "checkpoints").iterdir())[-1]
    hf = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(last), "--out", str(hf)]) == 0
    from transformers import pipeline

    generate = pipeline("text-generation", str(hf))
    text = generate("The", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("The") and len(text) > 3
    assert json.loads((hf / "config.json").read_text())["eos_token_id"] is not None


# ----------------------------------------------------------------------------- newcomer friction
def test_figures_write_into_figures_only_for_the_committed_study(monkeypatch):
    from labkit.figures import notebook_inputs

    assert figures_out([str(ROOT / "runs/paper-mini")], None) == str(ROOT / "figures")
    assert figures_out(["runs/mine"], None) == str(Path("runs/mine/figures"))
    assert figures_out(["runs/mine"], "out") == "out"
    # a notebook's parameters: None reads $LABKIT_RUNS (`make lab RUNS=...`), else the study
    monkeypatch.delenv("LABKIT_RUNS", raising=False)
    assert notebook_inputs(None, None) == ([str(ROOT / "runs/paper-mini")], str(ROOT / "figures"))
    monkeypatch.setenv("LABKIT_RUNS", "/r/a:/r/b")
    assert notebook_inputs(None, None) == (["/r/a", "/r/b"], "/r/a/figures")
    assert notebook_inputs(["/x"], "/out") == (["/x"], "/out")


def test_help_shows_defaults_and_probe_targets(capsys):
    with pytest.raises(SystemExit):
        main(["probe", "--help"])
    out = capsys.readouterr().out
    assert "(default: resid_post)" in out and "digit" in out and "first, last" in out


def test_make_lab_passes_lab_args():
    import subprocess

    from conftest import ROOT

    dry = subprocess.run(["make", "-n", "lab", "LAB_ARGS=--allow-root --port 8890"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "jupyter lab" in dry and "--allow-root --port 8890" in dry


def test_printed_next_commands_run_without_activating_the_venv():
    import sys

    from labkit.training import next_commands

    last = Path("runs/x/checkpoints/tokens_000000024576")
    lines = next_commands(Path("runs/x"), last, ["code", "general"])
    bin_dir = Path(sys.executable).parent
    if bin_dir.is_relative_to(Path.cwd()):
        bin_dir = bin_dir.relative_to(Path.cwd())
    assert all(line.startswith(f"  {bin_dir}/") for line in lines[1:])  # .venv/bin/..., not bare
    assert any(f"export --checkpoint {last}" in line for line in lines)
    assert any("--target digit" in line for line in lines)
    own = next_commands(Path("runs/x"), last, ["mine"])
    assert any("--split mine" in line for line in own)
    assert not any("--target digit" in line for line in own)  # world probes: not for own text


def test_probes_warn_when_the_run_never_saw_their_text():
    from labkit.analysis.probe_tasks import unseen_text_warning

    own = {"sources": {"mine": {"documents": 10, "tokens": 1000}}}
    world_spec = {"name": "digit", "source": {"kind": "world"}}
    assert "no 'synthetic' source" in unseen_text_warning(world_spec, own)
    data_spec = {"name": "kind", "source": {"kind": "data", "split": "train"}}
    assert unseen_text_warning(data_spec, own) is None
    seen = {"sources": {"synthetic": {"documents": 10, "tokens": 1000}}}
    assert unseen_text_warning(world_spec, seen) is None


def test_bad_span_offsets_name_the_document(tmp_path):
    from labkit.data.curation import load_text_source

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "a1", "text": "short", "spans": [{"start": 2, "end": 9}]}))
    with pytest.raises(ValueError, match=r"document 'a1': spans\[0\] needs integer start < end"):
        load_text_source("mine", str(path))


def test_milestones_first_last_best(tmp_path):
    from labkit.run import select_milestones

    for name, val in (("tokens_000000001024", 7.0), ("tokens_000000002048", 5.0),
                      ("tokens_000000004096", 6.0)):  # fmt: skip
        d = tmp_path / "checkpoints" / name
        d.mkdir(parents=True)
        meta = {"kind": "milestone", "tokens": int(name.split("_")[1]), "val": {"mine": val}}
        (d / "meta.json").write_text(json.dumps(meta))
        (d / "model.safetensors").write_bytes(b"")
    picked = [p.name for p in select_milestones(tmp_path, "first,last,best")]
    assert picked == ["tokens_000000001024", "tokens_000000004096", "tokens_000000002048"]


def test_an_empty_eval_split_is_skipped_with_a_note(tmp_path, capsys):
    write_prose_jsonl(tmp_path / "mine.jsonl", 40)
    cfg = own_config(tmp_path / "mine.jsonl")
    cfg.sources["mine"].eval_fraction = 0.0
    manifest = build(cfg, tmp_path / "data", quiet=True)
    assert manifest["eval_splits"] == {} and manifest["sources"]["mine"]["documents"] > 30
    assert "eval split 'mine' is empty and is skipped" in capsys.readouterr().err


def test_an_empty_stage_names_the_empty_sources():
    import numpy as np

    from labkit.data.loader import TokenStream

    class Empty:
        lengths = np.zeros(0, dtype=np.int64)

    with pytest.raises(ValueError, match=r"the sources \['retrieval'\] have no training documents"):
        TokenStream({"retrieval": Empty()}, [])
