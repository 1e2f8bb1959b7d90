"""Evaluation: the lm-eval adapter against a direct computation and lm-eval's own `hf` model, the
offline suite, milestone evaluation into the run and the registry, statistics with known answers,
the report, sweeps and baselines."""

import json
import os

import numpy as np
import pytest
import torch
import yaml
from conftest import CI
from lm_eval.api.instance import Instance
from scipy import stats as sps

from labkit.cli import main
from labkit.eval.adapter import LabkitLM
from labkit.eval.metrics import exact_match, f1
from labkit.eval.report import analyse, read_registry
from labkit.eval.stats import baseline_checks, mean_ci, paired_ttest, power_law_fit
from labkit.eval.tasks import TASKS, build_tasks
from labkit.run import list_milestones, load
from labkit.sweep import load_sweep, plan, run_sweep

PAIRS = [
    ("Question: What is 4 plus 18?\nAnswer:", " 22"),
    ("The Chaizoustoth Institute was", " established in 1820."),
    ("", "A sentence scored from the end-of-text token."),
    ("Born in 1968, the engineer ", "works as a baker"),  # trailing space moves to the target
    # choices of one question: the context is encoded once (a KV cache shared by the choices)
    ("The Gyploux Guild is housed in", " Chaibru"),
    ("The Gyploux Guild is housed in", " a small river town near Benoum"),
    ("The Gyploux Guild is housed in", " 1519"),
    # a second question, with a longer context: batched with the first, left-padded to it
    ("Question: Which guild keeps the oldest ledger of the river towns?\nAnswer:", " Gyploux"),
    ("Question: Which guild keeps the oldest ledger of the river towns?\nAnswer:", " none"),
]


def _ll_requests(pairs):
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


@pytest.fixture(scope="module")
def final_milestone(reference):
    return list_milestones(reference)[-1]


@pytest.fixture(scope="module")
def adapter(final_milestone):
    return LabkitLM(checkpoint=str(final_milestone), batch_size=3)


@pytest.mark.parametrize("batch_size", [3, 8])
def test_loglikelihood_matches_a_direct_computation(adapter, final_milestone, batch_size):
    """Batch 3: each question's choices share its context alone; batch 8: both questions'
    contexts share one left-padded forward."""
    model, _ = load(final_milestone)
    if batch_size != adapter.batch_size:
        adapter = LabkitLM(checkpoint=str(final_milestone), batch_size=batch_size)
    got = adapter.loglikelihood(_ll_requests(PAIRS), disable_tqdm=True)
    tok = adapter.tokenizer
    for (context, continuation), (logp, greedy) in zip(PAIRS, got, strict=True):
        if context:
            n_space = len(context) - len(context.rstrip())
            context, continuation = (
                context.rstrip(),
                context[len(context) - n_space :] + continuation,
            )
            whole = tok.encode(context + continuation).ids
            ctx = tok.encode(context).ids
        else:
            ctx, whole = (
                [adapter.eot_token_id],
                [adapter.eot_token_id, *tok.encode(continuation).ids],
            )
        cont = whole[len(ctx) :]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([whole]))[0].float(), -1)
        rows = lp[len(ctx) - 1 : len(whole) - 1]
        expected = float(rows.gather(-1, torch.tensor(cont)[:, None]).sum())
        assert logp == pytest.approx(expected, abs=1e-4)
        assert greedy == bool((rows.argmax(-1) == torch.tensor(cont)).all())


def test_adapter_matches_lm_evals_hf_model_on_the_exported_checkpoint(
    adapter, final_milestone, tmp_path
):
    from lm_eval.models.huggingface import HFLM

    from labkit.eval.adapter import checkpoint_tokenizer
    from labkit.export import to_hf

    model, _ = load(final_milestone)
    out = to_hf(model, tmp_path / "hf", tokenizer=checkpoint_tokenizer(final_milestone))
    hf = HFLM(
        pretrained=str(out),
        device="cpu",
        dtype="float32",
        batch_size=2,
        prefix_token_id=adapter.eot_token_id,
    )
    ours = adapter.loglikelihood(_ll_requests(PAIRS), disable_tqdm=True)
    theirs = hf.loglikelihood(_ll_requests(PAIRS), disable_tqdm=True)
    for (a, ga), (b, gb) in zip(ours, theirs, strict=True):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    # Rolling log-likelihood: a text longer than max_seq_len spans several windows.
    text = " ".join(["The Thiozal Guild employs a surveyor born in 1904."] * 40)
    assert len(adapter.tok_encode(text)) > adapter.max_length
    rolling = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    assert adapter.loglikelihood_rolling(rolling)[0] == pytest.approx(
        hf.loglikelihood_rolling(rolling, disable_tqdm=True)[0], rel=1e-4
    )


def test_generate_until_decodes_greedily_and_cuts_at_stop_sequences(adapter, final_milestone):
    model, _ = load(final_milestone)
    context = "Question: What is 4 plus 18?\nAnswer:"
    ids = adapter.tok_encode(context)
    greedy = model.generate(torch.tensor([ids]), 12, temperature=0.0)[0, len(ids) :].tolist()
    full = adapter.tok_decode(greedy)
    req = [Instance("generate_until", {}, (context, {"until": [], "max_gen_toks": 12}), 0)]
    assert adapter.generate_until(req)[0] == full
    stop = full.strip()[:2] or full[:1]
    cut = [Instance("generate_until", {}, (context, {"until": [stop], "max_gen_toks": 12}), 0)]
    assert adapter.generate_until(cut)[0] == full[: full.index(stop)]


def test_adapter_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a labkit checkpoint"):
        LabkitLM(checkpoint=str(tmp_path))


# ------------------------------------------------------------------- lm-eval's own command line
def test_lm_eval_command_registers_labkit_and_passes_every_argument(monkeypatch, final_milestone):
    import lm_eval.__main__
    from lm_eval.api.registry import get_model

    seen = {}

    def fake_cli():
        import sys

        seen["argv"] = list(sys.argv)
        seen["model"] = get_model("labkit")
        raise SystemExit(3)

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", fake_cli)
    args = ["run", "--model", "labkit", "--model_args", f"checkpoint={final_milestone.path}"]
    args += ["--tasks", "a,b", "--include_path", "/t", "--limit", "2", "--log_samples"]
    args += ["--seed", "1,2,3", "--batch_size", "2"]
    assert main(["lm-eval", *args]) == 3  # lm-eval's exit status is labkit's
    assert seen == {"argv": ["lm_eval", *args], "model": LabkitLM}
    assert main(["lm-eval", *args[:3], "--debug", *args[3:]]) == 3  # labkit's flag, not lm-eval's
    assert seen["argv"] == ["lm_eval", *args]


def test_lm_eval_command_fails_on_bad_arguments_with_one_line(final_milestone, capsys, monkeypatch):
    ok = f"checkpoint={final_milestone.path}"
    cases = {
        "needs --model_args checkpoint=DIR": [],
        "is not a labkit checkpoint": ["--model_args", "checkpoint=/nowhere"],
        "dtype='float64'": ["--model_args", ok + ",dtype=float64"],
        "unknown --model_args bogus": ["--model_args", ok + ",bogus=1"],
        "pass them as lm-eval's own flags (--device)": ["--model_args", ok + ",device=cpu"],
        "batch_size='abc'": ["--model_args", ok, "--batch_size", "abc"],
        "device='tpu' is not a device": ["--model_args", ok, "--device", "tpu"],
        "unrecognized arguments: --bogus": ["--model_args", ok, "--bogus"],
    }
    for message, extra in cases.items():
        assert main(["lm-eval", "run", "--model", "labkit", "--tasks", "x", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("labkit lm-eval: error: ") and message in err, (message, err)
        assert err.count("\n") == 1, err  # one line, no traceback
    # --debug, anywhere on the line (never handed to lm-eval), or LABKIT_DEBUG=1: the traceback.
    with pytest.raises(ValueError, match="needs --model_args checkpoint=DIR"):
        main(["lm-eval", "run", "--model", "labkit", "--debug", "--tasks", "x"])
    monkeypatch.setenv("LABKIT_DEBUG", "1")
    with pytest.raises(ValueError, match="needs --model_args checkpoint=DIR"):
        main(["lm-eval", "run", "--model", "labkit", "--tasks", "x"])


def test_adapter_picks_the_cpu_when_cuda_is_absent(final_milestone, monkeypatch, capsys):
    from labkit.eval.adapter import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cuda:0") == torch.device("cpu")  # lm-eval's CLI default
    assert "evaluating on the CPU" in capsys.readouterr().err
    lm = LabkitLM(checkpoint=str(final_milestone.path), device="cuda:0")
    assert lm.device == torch.device("cpu") and lm.model.cfg.device == torch.device("cpu")


def _lm_eval_results(out_dir) -> dict:
    from labkit.eval.runner import flatten

    (path,) = list(out_dir.rglob("results_*.json"))
    return flatten(json.loads(path.read_text())["results"])


def _suite_under_both_command_lines(milestone, tmp_path, monkeypatch, n, limit=None):
    """`labkit lm-eval --model labkit` (no --device, CUDA absent) and plain `lm_eval --model hf`
    (another process, no labkit imported) on the export: the whole labkit_suite, both results."""
    import subprocess
    import sys
    from pathlib import Path

    from labkit.eval.adapter import checkpoint_tokenizer
    from labkit.eval.tasks import build_tasks
    from labkit.export import to_hf

    tasks = build_tasks(milestone.data_path, tmp_path / "tasks", n=n)
    model, _ = load(milestone)
    export = to_hf(model, tmp_path / "hf", tokenizer=checkpoint_tokenizer(milestone))
    common = ["--include_path", str(tasks), "--tasks", "labkit_suite"]
    common += ["--limit", str(limit)] if limit else []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ours = ["lm-eval", "run", "--model", "labkit", "--model_args", f"checkpoint={milestone.path}"]
    assert main([*ours, *common, "--output_path", str(tmp_path / "ours")]) == 0
    lm_eval = Path(sys.executable).with_name("lm_eval")
    theirs = [
        str(lm_eval),
        "run",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={export},dtype=float32",
    ]
    theirs += [*common, "--device", "cpu", "--output_path", str(tmp_path / "theirs")]
    proc = subprocess.run(theirs, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _lm_eval_results(tmp_path / "ours"), _lm_eval_results(tmp_path / "theirs")


def _assert_same_scores(ours, theirs):
    assert set(ours) >= set(TASKS) and ours.keys() == theirs.keys()
    for task, metrics in ours.items():
        assert metrics.keys() == theirs[task].keys(), task
        for name, value in metrics.items():
            assert value == pytest.approx(theirs[task][name], rel=1e-4, abs=1e-6), (task, name)
    assert "exact_match" in ours["labkit_squad"]


def test_plain_lm_eval_hf_runs_the_suite_on_the_export_with_labkits_scores(
    final_milestone, tmp_path, monkeypatch
):
    _assert_same_scores(
        *_suite_under_both_command_lines(final_milestone, tmp_path, monkeypatch, n=20, limit=6)
    )


@pytest.mark.slow
def test_plain_lm_eval_hf_scores_the_whole_suite_as_labkit_does(
    final_milestone, tmp_path, monkeypatch
):
    _assert_same_scores(
        *_suite_under_both_command_lines(final_milestone, tmp_path, monkeypatch, 200)
    )


@pytest.mark.slow  # ~45 s on 2 cores: lm-eval's CLI indexes all of its own tasks first
def test_lm_eval_command_runs_the_offline_suite_on_a_checkpoint(
    final_milestone, ci_data, tmp_path, monkeypatch
):
    """`labkit lm-eval` with --include_path on a ci milestone: lm-eval's results file holds the
    same scores as lm-eval's evaluator called on the adapter directly."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    tasks = build_tasks(ci_data, tmp_path / "tasks", n=6)
    monkeypatch.chdir(tmp_path)
    # lm-eval hands --batch_size and --device to the model itself (not in --model_args).
    args = ["--model", "labkit", "--model_args", f"checkpoint={final_milestone}"]
    args += ["--batch_size", "4", "--device", "cpu"]
    args += ["--include_path", str(tasks), "--tasks", "labkit_qa,labkit_arithmetic"]
    args += ["--limit", "4", "--output_path", str(tmp_path / "out")]
    assert main(["lm-eval", *args]) == 0
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    theirs = json.loads(results_file.read_text())["results"]
    direct = simple_evaluate(
        model=LabkitLM(checkpoint=str(final_milestone), batch_size=4),
        tasks=["labkit_qa", "labkit_arithmetic"],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        limit=4,
    )["results"]
    for task, metric in (("labkit_qa", "acc,none"), ("labkit_arithmetic", "exact_match,strip")):
        assert theirs[task][metric] == pytest.approx(direct[task][metric]), task


# ------------------------------------------------------------------------------------ the suite
def test_build_tasks_is_deterministic_and_covers_the_nine(ci_data, tmp_path):
    a, b = build_tasks(ci_data, tmp_path / "a", n=20), build_tasks(ci_data, tmp_path / "b", n=20)
    assert len(TASKS) == 9
    for name, spec in TASKS.items():
        rows_a = (a / f"{name}.jsonl").read_text()
        assert rows_a == (b / f"{name}.jsonl").read_text(), name
        rows = [json.loads(line) for line in rows_a.splitlines()]
        assert rows, name
        if spec["kind"] == "choice":
            assert all(0 <= r["label"] < len(r["choices"]) for r in rows)
            assert all(len(set(r["choices"])) == len(r["choices"]) for r in rows)
        yaml_text = (a / f"{name}.yaml").read_text()
        assert str(a / f"{name}.jsonl") in yaml_text  # absolute: any working directory works
        assert f"random_baseline: {spec['baseline']}" in yaml_text
    arithmetic = [json.loads(x) for x in (a / "labkit_arithmetic.jsonl").read_text().splitlines()]
    for row in arithmetic:
        x, y = map(int, row["context"].split("What is ")[1].split("?")[0].split(" plus "))
        assert int(row["answer"]) == x + y and 1 <= x <= 20 and 1 <= y <= 20
    squad = [json.loads(x) for x in (a / "labkit_squad.jsonl").read_text().splitlines()]
    assert any(not r["answerable"] for r in squad) and any(r["answerable"] for r in squad)


def test_squad_metrics():
    from lm_eval.api.metrics import exact_match_hf_evaluate

    from labkit.eval.tasks import SQUAD_NORMALISATION

    pairs = [("The Clockmaking.", "clockmaking"), ("an apple, the pear", "Apple pear!"),
             ("Plugov", "plugov."), ("theory", "ory"), ("A-team", "team"), ("no", "not in the passage"),
             ("Not in the passage.", "not in the passage"), ("the the", "")]  # fmt: skip
    for prediction, truth in pairs:  # lm-eval's exact_match, as the YAML asks, is SQuAD's
        theirs = exact_match_hf_evaluate(
            [prediction], [truth], regexes_to_ignore=SQUAD_NORMALISATION, ignore_case=True
        )["exact_match"]
        assert theirs == exact_match(prediction, truth), (prediction, truth)
    assert exact_match("The Clockmaking.", "clockmaking") == 1.0
    assert f1("clockmaking in Plugov", "clockmaking") == pytest.approx(0.5)  # P 1/3, R 1
    assert f1("", "") == 1.0 and f1("x", "") == 0.0 and f1("a b", "c d") == 0.0


def test_eval_command_writes_every_milestone_into_the_run_and_the_registry(
    reference, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # the suite's paths work from any working directory
    registry = tmp_path / "index.jsonl"
    args = [
        "eval",
        "--run",
        str(reference),
        "--tasks",
        "labkit_suite",
        "--limit",
        "3",
        "--registry",
        str(registry),
    ]
    assert main(args) == 0
    milestones = list_milestones(reference)
    records = [json.loads(x) for x in registry.read_text().splitlines()]
    assert [r["milestone"] for r in records] == [m.name for m in milestones]
    for r in records:
        assert set(r["scores"]) >= set(TASKS)
        assert (reference / "evals" / f"{r['milestone']}.json").exists()
        assert 0.0 <= r["scores"]["labkit_qa"]["acc"] <= 1.0
        squad = r["scores"]["labkit_squad"]  # exact match by lm-eval, F1 by labkit (samples)
        assert 0.0 <= squad["exact_match"] <= squad["f1"] <= 1.0 and "f1_stderr" in squad
    assert "milestone" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- statistics
def test_mean_ci_and_paired_ttest_known_answers():
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci.mean == 2.0 and ci.std == 1.0
    assert ci.ci_high - 2.0 == pytest.approx(sps.t.ppf(0.975, 2) / np.sqrt(3))
    a, b = [0.50, 0.52, 0.55, 0.49], [0.45, 0.50, 0.51, 0.47]
    t = paired_ttest(a, b)
    ref = sps.ttest_rel(a, b)
    assert t.t == pytest.approx(ref.statistic) and t.p == pytest.approx(ref.pvalue)
    assert t.mean_difference == pytest.approx(0.0325) and t.significant
    assert paired_ttest([1, 2], [1, 2]).p == 1.0
    with pytest.raises(ValueError):
        paired_ttest([1.0], [2.0])


def test_power_law_fit_recovers_known_exponents():
    n = np.array([1e5, 1e6, 1e7, 1e8])
    fit = power_law_fit(n, 3.0 * n**-0.25)
    assert (
        fit.a == pytest.approx(3.0) and fit.b == pytest.approx(0.25) and fit.r2 == pytest.approx(1)
    )
    n = np.geomspace(1e5, 1e9, 8)
    fit = power_law_fit(n, 40.0 * n**-0.3 + 1.7, irreducible=True)
    assert (fit.a, fit.b, fit.c) == pytest.approx((40.0, 0.3, 1.7), rel=1e-3)
    with pytest.raises(ValueError, match="positive"):
        power_law_fit([1, 2], [0, 1])


def test_baseline_checks_known_answers():
    random = {"t1": 0.25, "t2": 0.5, "t3": 0.25}
    good = {
        "trained": {"t1": [0.60, 0.61, 0.605], "t2": [0.70, 0.71, 0.70], "t3": [0.3] * 3},
        "untrained": {"t1": [0.30, 0.31, 0.30], "t2": [0.55, 0.55, 0.56], "t3": [0.4] * 3},
    }
    checks = baseline_checks(good, random)
    assert checks["consistent"] and checks["monotonic_tasks"] == ["t1", "t2"]
    assert checks["monotonic_share"] == pytest.approx(2 / 3) and checks["monotonic"]
    noisy = {**good, "trained": {**good["trained"], "t1": [0.55, 0.60, 0.65]}}
    checks = baseline_checks(noisy, random)
    assert not checks["consistent"] and checks["inconsistent"][0][:2] == ("trained", "t1")


def _train_record(exp, preset, seed, loss, lr=3e-3):
    from labkit.config import ModelConfig

    model = ModelConfig.preset(preset).to_dict() | {"name": preset}
    return {
        "experiment_id": exp,
        "config": {
            "seed": seed,
            "model": {"preset": preset},
            "data": {"mix": "dense"},
            "train": {"lr": lr, "seq_len": 256, "tokens": 10**6},
        },
        "model": model,
        "final": {"tokens": 10**6, "best_val_mean": loss},
    }


def _eval_record(exp, scores, tokens=10**6, val_loss=3.0):
    return {
        "kind": "eval",
        "experiment_id": exp,
        "milestone": f"tokens_{tokens:012d}",
        "tokens": tokens,
        "val_loss": val_loss,
        "scores": {t: {"acc": v} for t, v in scores.items()},
    }


def test_report_on_a_synthetic_registry(tmp_path):
    from labkit.config import ModelConfig

    records = []
    n_mla = ModelConfig.preset("tiny-mla").num_params(non_embedding=True)
    n_gqa = ModelConfig.preset("tiny-gqa").num_params(non_embedding=True)
    a_scores = {0: 0.60, 1: 0.62, 2: 0.61}
    b_scores = {0: 0.50, 1: 0.55, 2: 0.52}
    for seed in range(3):
        records.append(_train_record(f"mla-s{seed}", "tiny-mla", seed, 3.0))
        records.append(
            _eval_record(
                f"mla-s{seed}", {"labkit_qa": a_scores[seed], "labkit_siqa": a_scores[seed]}
            )
        )
        gqa_loss = 3.0 * (n_gqa / n_mla) ** -0.2  # on the same power law as every size here
        records.append(_train_record(f"gqa-s{seed}", "tiny-gqa", seed, gqa_loss))
        records.append(
            _eval_record(
                f"gqa-s{seed}", {"labkit_qa": b_scores[seed], "labkit_siqa": b_scores[seed]}
            )
        )
    # three sizes on an exact power law of the loss
    for preset in ("small-mla", "medium-mla"):
        n = ModelConfig.preset(preset).num_params(non_embedding=True)
        records.append(_train_record(preset, preset, 0, 3.0 * (n / n_mla) ** -0.2))
    result = analyse(records)
    test = next(
        t
        for t in result["ttests"]
        if {t["a"].split()[0], t["b"].split()[0]} == {"tiny-mla", "tiny-gqa"}
    )
    ref = sps.ttest_rel([a_scores[s] for s in range(3)], [b_scores[s] for s in range(3)])
    assert test["paired_over"] == "seeds"
    assert abs(test["t"]) == pytest.approx(abs(ref.statistic)) and test["p"] == pytest.approx(
        ref.pvalue
    )
    assert result["scaling"]["loss"]["b"] == pytest.approx(0.2, abs=1e-6)
    configs = result["configurations"]
    qa = next(c for name, c in configs.items() if name.startswith("tiny-mla "))["tasks"][
        "labkit_qa"
    ]
    assert qa["mean"] == pytest.approx(0.61) and qa["n"] == 3
    assert result["correlations"]["matrix"][0][1] == pytest.approx(1.0)  # qa and siqa move together
    registry = tmp_path / "index.jsonl"
    registry.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["report", "--registry", str(registry), "--out", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    for section in (
        "## Experiments",
        "## Scores per task",
        "## Paired t-tests",
        "## Scaling",
        "## Correlations",
        "![scores]",
    ):
        assert section in text, section
    assert (tmp_path / "r_files" / "scores.png").exists()
    assert read_registry(registry) == records
    with pytest.raises(FileNotFoundError, match="not found"):
        read_registry(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------------- sweeps
def test_shipped_sweeps_plan_valid_runs(capsys):
    sizes = {"architecture.toml": 6, "learning-rate.toml": 4, "sequence-length.toml": 3}
    for name, count in sizes.items():
        entries = run_sweep(f"pretrain/configs/sweeps/{name}", print_only=True, nproc=8)
        assert len(entries) == count
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 13 and all(x.startswith("torchrun --nproc_per_node=8") for x in lines)


def test_sweep_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nconfig = "c.toml"\n[grid]\nlr = [1]\n')
    with pytest.raises(ValueError, match="section.key"):
        load_sweep(bad)
    bad.write_text('name = "x"\nconfig = "c.toml"\ncolour = 1\n[grid]\n"train.lr" = [1]\n')
    with pytest.raises(ValueError, match="unknown keys"):
        load_sweep(bad)


def test_a_sweep_trains_every_run_into_the_registry(ci_data, tmp_path):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        f'name = "tiny"\nconfig = "{CI}"\n'
        f'set = ["data.dir={ci_data}", "train.tokens=2048", "log.tensorboard=false"]\n'
        '[grid]\n"train.lr" = [1e-3, 3e-3]\n'
    )
    os.environ["OMP_NUM_THREADS"] = "1"
    entries = run_sweep(sweep, runs_root=tmp_path / "runs")
    assert len(plan(load_sweep(sweep), tmp_path / "runs")) == 2
    assert all((e["run_dir"] / "final.json").exists() for e in entries)
    records = read_registry(tmp_path / "runs" / "index.jsonl")
    assert sorted(r["config"]["train"]["lr"] for r in records) == [1e-3, 3e-3]


@pytest.mark.slow
def test_baselines_command_end_to_end(ci_data, tmp_path):
    from labkit.eval.baselines import establish_baselines

    record = establish_baselines(
        "tiny-mla",
        CI,
        seeds=(0, 1),
        untrained_steps=1,
        trained_steps=8,
        out_dir=tmp_path / "b",
        limit=8,
        overrides=[f"data.dir={ci_data}", "log.tensorboard=false"],
    )
    assert set(record["scores"]) == {"trained", "untrained"}
    assert all(len(v) == 2 for v in record["scores"]["trained"].values())
    assert (tmp_path / "b" / "tiny-mla.json").exists()
    assert json.loads((tmp_path / "index.jsonl").read_text().splitlines()[-1])["kind"] == "baseline"


def test_eval_builds_only_the_requested_suite_tasks(ci_data, tmp_path):
    """`labkit eval --tasks X` builds X alone; asking for more adds them; the whole group builds
    the rest; a task already built is not rebuilt."""
    import shutil

    from labkit.eval.runner import tasks_dir_for

    data = tmp_path / "data"
    shutil.copytree(ci_data, data, ignore=shutil.ignore_patterns("tasks"))
    milestone = tmp_path / "milestone"
    milestone.mkdir()
    meta = {"step": 1, "tokens": 1024, "data_dir": str(data)}  # what the reader needs
    (milestone / "meta.json").write_text(json.dumps(meta))

    def built(out):
        group = yaml.safe_load((out / "labkit_suite.yaml").read_text())
        return set(json.loads((out / "suite.json").read_text())), group["metadata"]["partial"]

    out = tasks_dir_for(milestone, tasks=["labkit_arithmetic"])
    assert built(out) == ({"labkit_arithmetic"}, True)
    stamp = (out / "labkit_arithmetic.jsonl").stat().st_mtime_ns
    assert tasks_dir_for(milestone, tasks=["labkit_arithmetic", "hellaswag"]) == out  # lm-eval's
    assert (out / "labkit_arithmetic.jsonl").stat().st_mtime_ns == stamp  # not rebuilt
    assert built(tasks_dir_for(milestone, tasks=["labkit_qa"])) == (
        {"labkit_arithmetic", "labkit_qa"},
        True,
    )
    assert built(tasks_dir_for(milestone, tasks=["labkit_suite"])) == (set(TASKS), False)
    with pytest.raises(ValueError, match="unknown labkit_suite task"):
        build_tasks(data, tmp_path / "other", names=["labkit_nope"])


def test_wilson_interval_matches_statsmodels_reference_values():
    from labkit.eval.stats import wilson_interval

    # Reference values of the Wilson score interval (95 %), e.g. statsmodels'
    # proportion_confint(count, nobs, method="wilson").
    lo, hi = wilson_interval(12, 50)
    assert (lo, hi) == pytest.approx((0.1430, 0.3742), abs=2e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=2e-4)
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and lo == pytest.approx(0.8389, abs=2e-4)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(21, 20)
