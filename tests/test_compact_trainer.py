"""The trainer stays a compact loop with one owner for each thing around it: a custom loss is one
overridden method, the run's layout and milestones have one reader, the loader owns its position,
and an installed wheel (outside the checkout) still finds its probe specs and configs."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import CI, ROOT, RUN

from labkit import run as runs
from labkit.run import list_milestones, load
from labkit.run.layout import META, METRICS


# ------------------------------------------------------------------------------ compact trainer
def function_lengths(path: Path) -> dict[str, int]:
    """Lines of every function and method (decorators excluded), by qualified name."""
    tree = ast.parse(path.read_text())
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    out[f"{node.name}.{item.name}"] = item.end_lineno - item.lineno + 1
        elif isinstance(node, ast.FunctionDef) and node.col_offset == 0:
            out[node.name] = node.end_lineno - node.lineno + 1
    return out


def test_the_trainer_reads_in_one_file_with_a_short_loop():
    lines = len(Path(RUN).read_text().splitlines())
    lengths = function_lengths(Path(RUN))
    loop = lengths.pop("Trainer.fit")
    longest = max(lengths, key=lengths.get)
    assert lines <= 350, lines
    assert loop <= 120, loop
    assert lengths[longest] <= 60, (longest, lengths[longest])


def test_library_code_locates_no_repository_root():
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in sorted((ROOT / "labkit").rglob("*.py"))
        if "shipped" not in p.parts
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "parents[" in line
    ]
    assert offenders == []


AUX_TRAINER = """
import sys

sys.path.insert(0, {pretrain!r})
import run  # pretrain/run.py

COEF = {coef}


class LatentL2(run.Trainer):
    '''Next-token loss plus an L2 penalty on every layer's c_kv: the one method changed.'''

    def loss(self, batch):
        latents = []
        hooks = [(f"blocks.{{i}}.attn.hook_kv_latent", lambda act, hook: latents.append(act))
                 for i in range(self.model.cfg.n_layers)]
        with self.model.hooks(fwd_hooks=hooks):
            lm = super().loss(batch)
        return lm + COEF * sum(c.float().pow(2).mean() for c in latents)


sys.exit(run.main(trainer=LatentL2))
"""


def _train(cmd: list[str], ci_data, run_dir: Path, steps: int) -> list[dict]:
    sets = [f"data.dir={ci_data}", "log.tensorboard=false", f"train.tokens={steps * 1024}"]
    cmd = cmd + ["--config", CI, "--run-dir", str(run_dir)]
    cmd += [a for s in sets for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(x) for x in (run_dir / METRICS).read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def test_a_custom_loss_term_is_one_overridden_method(ci_data, tmp_path):
    """An auxiliary L2 penalty on c_kv, added by overriding `Trainer.loss` alone: the logged
    loss carries the term from the first step, and training shrinks the latent's norm scale."""
    coef = 0.5
    script = tmp_path / "aux_trainer.py"
    script.write_text(AUX_TRAINER.format(pretrain=str(ROOT / "pretrain"), coef=coef))
    plain = _train([sys.executable, RUN], ci_data, tmp_path / "plain", steps=8)
    aux = _train([sys.executable, str(script)], ci_data, tmp_path / "aux", steps=8)
    n_layers = 2  # ci.toml
    # Same weights and batch at step 1: the difference is the penalty, ~1 per layer at init
    # (c_kv leaves an RMSNorm whose scale starts at 1).
    gap = aux[0]["loss"] - plain[0]["loss"]
    assert abs(gap - coef * n_layers) < 0.05 * n_layers, gap
    (model_plain, plain_at), (model_aux, aux_at) = (
        load(list_milestones(tmp_path / name)[-1]) for name in ("plain", "aux")
    )
    assert aux_at.step == plain_at.step == 8
    scale = [
        float(np.mean([b.attn.kv_norm.weight.abs().mean().item() for b in m.blocks]))
        for m in (model_plain, model_aux)
    ]
    assert scale[1] < scale[0] - 0.01, scale


# ------------------------------------------------------------------------------ runs: one owner
def test_milestone_record_is_read_once_with_one_line_errors(tmp_path):
    milestone = tmp_path / "checkpoints" / runs.milestone_name(2048)
    milestone.mkdir(parents=True)
    meta = {"step": 2, "tokens": 2048, "val": {"a": 1.0, "b": 3.0}, "data_dir": "/d",
            "checksums": {"model.safetensors": "ab" * 32}}  # fmt: skip
    (milestone / META).write_text(json.dumps(meta))
    m = runs.Milestone.read(milestone)
    assert (m.step, m.tokens, m.val_mean, m.model_sha256) == (2, 2048, 2.0, "ab" * 32)
    assert m.data_path == Path("/d") and m.meta["checksums"]
    assert list_milestones(tmp_path) == [milestone]
    (milestone / META).write_text("{}")
    with pytest.raises(ValueError, match="not a checkpoint meta"):
        runs.Milestone.read(milestone)
    with pytest.raises(ValueError, match="no meta.json"):
        runs.Milestone.read(tmp_path)


def test_one_function_spells_the_trainer_command(tmp_path):
    from labkit.resources import trainer_script

    single = runs.trainer_command("c.toml", tmp_path / "r", ["train.lr=1e-3"])
    assert single == [sys.executable, str(trainer_script()), "--config", "c.toml",
                      "--run-dir", str(tmp_path / "r"), "--resume", "--set", "train.lr=1e-3"]  # fmt: skip
    assert trainer_script().samefile(RUN)  # a checkout runs its own pretrain/run.py
    multi = runs.trainer_command("c.toml", "r", nproc=4, resume=False)
    assert multi[:2] == ["torchrun", "--nproc_per_node=4"] and "--resume" not in multi
    # the launchers only call it: none spells the trainer path or its flags itself
    for rel in ("labkit/sweep.py", "labkit/eval/baselines.py", "labkit/bench/common.py",
                "pretrain/paper.py"):  # fmt: skip
        text = (ROOT / rel).read_text()
        assert "trainer_command(" in text and '"--run-dir"' not in text, rel


def test_the_loader_owns_its_position(ci_data):
    from labkit.data.loader import Loader, MixedData

    data = MixedData(ci_data, "dense", 24576, 0)
    a = Loader(data, rank=0, world=1, micro_batch=2)
    first = [a.next_batch(16, tokens_seen=i * 32) for i in range(3)]
    state = a.state_dict()
    later = a.next_batch(16, tokens_seen=96)
    b = Loader(data, rank=0, world=1, micro_batch=2)
    b.load_state_dict(json.loads(json.dumps(state)))  # a resume state is JSON
    assert np.array_equal(b.next_batch(16, tokens_seen=96), later)
    assert not np.array_equal(first[0], first[1])
    # two ranks read disjoint halves of what one rank reads
    r0, r1 = (Loader(data, rank=r, world=2, micro_batch=1) for r in (0, 1))
    one = Loader(data, rank=0, world=1, micro_batch=2).next_batch(16, 0)
    assert np.array_equal(np.concatenate([r0.next_batch(16, 0), r1.next_batch(16, 0)]), one)


def test_the_loader_says_how_often_a_run_reads_each_source(ci_data):
    from labkit.data.build import load_manifest
    from labkit.data.loader import USEFUL_PASSES, MixedData, passes_report

    plan = load_manifest(ci_data)["mixes"]["dense"]
    planned = plan[-1]["end_token"]
    epochs: dict[str, float] = {}
    for stage in plan:
        for source, e in stage["epochs"].items():
            epochs[source] = epochs.get(source, 0.0) + e
    # at the mix's own budget, a run reads each source as often as the build planned
    once = MixedData(ci_data, "dense", planned, 0).passes
    assert once == pytest.approx({k: v for k, v in epochs.items() if v}, abs=0.01)
    ten = MixedData(ci_data, "dense", 10 * planned, 0).passes
    assert ten == pytest.approx({k: 10 * v for k, v in once.items()}, rel=0.01, abs=0.05)
    line, warning = passes_report({"code": 0.5, "prose": 2 * USEFUL_PASSES})
    assert line == "data passes: prose 8x, code 0.5x"
    assert "prose (8x)" in warning and "code" not in warning and "train.tokens" in warning
    assert passes_report({"prose": USEFUL_PASSES})[1] is None


# ------------------------------------------------------------------------------ probes
def test_probe_spec_is_parsed_once_and_reads_like_its_yaml():
    from labkit.analysis.probe_tasks import ProbeSpec, load_probe_spec

    spec = load_probe_spec("digit", max_documents=7)
    assert isinstance(spec, ProbeSpec) and spec.source["documents"] == 7
    assert spec["label"]["kind"] == spec.label["kind"] and spec.get("nope", 1) == 1
    with pytest.raises(ValueError, match="positions.kind"):
        ProbeSpec.parse({**spec.raw, "positions": {"kind": "everywhere"}})


def test_sites_have_one_source_and_one_check():
    from labkit.analysis.activations import SITES, check_site_layers
    from labkit.cli import build_parser
    from labkit.config import ModelConfig

    cka = build_parser()._subparsers._group_actions[0].choices["cka"]
    site = next(a for a in cka._actions if a.dest == "site")
    assert list(site.choices) == list(SITES)
    gqa = ModelConfig.preset("tiny-gqa")
    assert check_site_layers(gqa, "resid_post") == list(range(gqa.n_layers))
    with pytest.raises(ValueError, match="only in MLA"):
        check_site_layers(gqa, "kv_latent")
    with pytest.raises(ValueError, match="layers \\[99\\]"):
        check_site_layers(gqa, "resid_post", [99])
    with pytest.raises(ValueError, match="unknown site"):
        check_site_layers(gqa, "resid")


def test_pivot_gives_the_layer_by_milestone_grid():
    from labkit.analysis.probing import pivot

    rows = [{"layer": layer, "milestone": m, "accuracy": layer + i / 10, "control": None}
            for i, m in enumerate(["b", "a"]) for layer in (1, 0)]  # fmt: skip
    layers, names, grid = pivot(rows, "accuracy")
    assert layers == [0, 1] and names == ["b", "a"]
    assert grid.tolist() == [[0.0, 0.1], [1.0, 1.1]]
    assert np.isnan(pivot(rows, "control")[2]).all()
    assert pivot(rows, lambda r: f"{r['accuracy']:.1f}")[2][1, 1] == "1.1"


def test_every_command_has_its_own_builder():
    import inspect

    from labkit import cli

    assert len(inspect.getsource(cli.build_parser).splitlines()) <= 20
    for add in cli.COMMANDS:
        assert len(inspect.getsource(add).splitlines()) <= 60, add.__name__


# ------------------------------------------------------------------------------ the wheel
@pytest.mark.slow
def test_the_wheel_probes_outside_the_checkout(reference, tmp_path):
    """Build the wheel, install it into a fresh venv outside the checkout (no network: its
    dependencies come from this venv's site-packages, without the checkout's editable labkit),
    and run `labkit probe` with the shipped spec on a CI run."""
    wheels, venv, work = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    work.mkdir()
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(pip + ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                          str(ROOT)], check=True, cwd=work)  # fmt: skip
    wheel = next(wheels.glob("labkit-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    ours = next(
        p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "torch").is_dir()
    )
    (site / "deps.pth").write_text(
        f"{ours}\n"
    )  # a path line: the checkout's editable .pth is not read
    py = venv / "bin" / "python"
    subprocess.run(pip + ["--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                   check=True, cwd=work)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    where = subprocess.run([str(py), "-c", "import labkit; print(labkit.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert str(venv) in where and str(ROOT) not in where
    out = work / "rows.json"
    proc = subprocess.run(
        [str(venv / "bin" / "labkit"), "probe", "--run", str(reference), "--layer", "all",
         "--target", "digit", "--milestones", "last", "--max-documents", "24", "--json", str(out)],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert {r["layer"] for r in rows} == {0, 1} and all(0 <= r["accuracy"] <= 1 for r in rows)
    # a shipped config is found by the path the README writes
    cfg = subprocess.run([str(py), "-c", textwrap.dedent("""
        from labkit.config import TrainConfig
        print(TrainConfig.load("pretrain/configs/ci.toml").name)""")],
        cwd=work, env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert cfg.strip() == "ci"


# ------------------------------------------------------------------------ the activation cache
def test_activations_are_kept_beside_the_milestone_and_recomputed_when_inputs_change(
    reference, monkeypatch
):
    """One forward pass per milestone and text: a second analysis of the same weights and tokens
    reads them from runs/<id>/cache/ (equal to a fresh collection, bit for bit); other tokens or
    other weights compute again, and an entry of weights the milestone no longer has is removed."""
    import dataclasses

    import labkit.analysis.activations as activations
    from labkit.study import LoadedMilestone, over_milestones

    calls = []
    real = activations.collect
    monkeypatch.setattr(activations, "collect", lambda *a, **k: calls.append(1) or real(*a, **k))
    milestone = list_milestones(reference)[-1]
    seqs = [[5, 17, 99, 3, 3, 250, 8], [41, 42, 43, 44]]
    sites, layers = ["resid_post", "kv_latent"], [0, 1]

    def measure(at):
        return {"acts": at.activations(seqs, sites, layers)}

    first = over_milestones([milestone], measure)[0]["acts"]
    again = over_milestones([milestone], measure)[0]["acts"]
    assert len(calls) == 1 and all((first[k] == again[k]).all() for k in first)
    model, _ = load(milestone)
    fresh = real(model, seqs, sites, layers, progress=False)
    assert all((np.asarray(fresh[k]) == first[k]).all() for k in first)
    entries = list((reference / "cache" / milestone.name / "activations").iterdir())
    assert len(entries) == 1 and entries[0].name.startswith(milestone.model_sha256[:16])
    over_milestones([milestone], lambda at: {"acts": at.activations(seqs[:1], sites, layers)})
    assert len(calls) == 2  # other tokens: computed
    other = dataclasses.replace(
        milestone, meta=milestone.meta | {"checksums": {"model.safetensors": "f" * 64}}
    )
    LoadedMilestone(other, model, None).activations(seqs, sites, layers)
    assert len(calls) == 3  # other weights: computed, and the entries of the old ones removed
    left = list((reference / "cache" / milestone.name / "activations").iterdir())
    assert [e.name[:16] for e in left] == ["f" * 16]


# ------------------------------------------------------------------------ an attention sink
def test_a_first_token_is_carried_from_training_to_tokens_evaluation_analysis_and_export(
    ci_data, tmp_path
):
    """`data.bos = true`: every training and evaluation window starts with <|endoftext|>, the
    model records it as bos_token_id, and to_tokens, the held-out text of the analyses, the probe
    sequences, the lm-eval adapter, perplexity and the Hugging Face export all put it first."""
    from transformers import AutoTokenizer

    from labkit.analysis.probe_tasks import load_probe_spec
    from labkit.analysis.probing import probe_set
    from labkit.data.loader import Loader, MixedData, eval_windows
    from labkit.eval.adapter import LabkitLM
    from labkit.eval.perplexity import perplexity, split_documents
    from labkit.export import from_hf, to_hf
    from labkit.study import HeldOut, over_milestones

    run_dir = tmp_path / "sink"
    _train([sys.executable, RUN, "--set", "data.bos=true"], ci_data, run_dir, steps=4)
    model, milestone = load(list_milestones(run_dir)[-1])
    bos = json.loads((ci_data / "manifest.json").read_text())["tokenizer"]["eot_id"]
    assert model.cfg.bos_token_id == bos and model.cfg.default_prepend_bos
    loader = Loader(MixedData(ci_data, "dense", 8192, 0), 0, 1, 4, bos=bos)
    assert (loader.next_batch(64, 0)[:, 0] == bos).all()
    assert (eval_windows(ci_data, "general", 512, 64, bos)[:, 0] == bos).all()
    tokens = model.to_tokens("Ada Lovelace was born in 1815.")
    assert tokens[0, 0] == bos and model.to_tokens("Ada", prepend_bos=False)[0, 0] != bos
    texts = over_milestones([milestone], lambda at: {"first": [s[0] for s in at.text]},
                            HeldOut("general", 4, 32))[0]["first"]  # fmt: skip
    assert texts == [bos] * len(texts)
    spec = load_probe_spec("digit", max_documents=8)
    probes = probe_set(spec, ci_data, model.cfg.max_seq_len, bos=bos)
    assert all(s[0] == bos and 0 not in p for s, p in
               zip(probes.data.sequences, probes.data.positions, strict=True))  # fmt: skip
    lm = LabkitLM(checkpoint=str(milestone.path))
    assert (
        lm.tok_encode("Ada")[0] == bos and lm.tok_encode("Ada", add_special_tokens=False)[0] != bos
    )
    docs = split_documents(ci_data, "general", 3)
    assert perplexity(model, docs)["tokens"] == sum(len(d) for d in docs)  # every token scored
    out = to_hf(model, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["bos_token_id"] == bos
    assert AutoTokenizer.from_pretrained(str(out))("Ada")["input_ids"][0] == bos
    assert from_hf(out).cfg.bos_token_id == bos
