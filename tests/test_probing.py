"""The probing engine on planted signals, and `labkit probe` on the CI run with every shipped spec."""

import json
from pathlib import Path

import numpy as np
import pytest

from labkit.analysis.probing import (
    bag_of_tokens,
    beats_all,
    control_labels,
    fit_and_test,
    permutation_null,
    probe_with_baselines,
    split_by_document,
    train_probe,
)
from labkit.cli import main

PROBES = Path(__file__).resolve().parents[1] / "probes"


def test_planted_signal_is_found_and_selective():
    g = np.random.default_rng(0)
    n_docs, per_doc = 60, 20
    groups = np.repeat(np.arange(n_docs), per_doc)
    types = g.integers(0, 200, size=len(groups))  # "token ids"
    y = (types % 2).astype(int)  # the label is a property every type shares by its parity...
    X = g.normal(size=(len(y), 16))
    X[:, 0] += 2.5 * (y - 0.5)  # ...and the representation encodes it in one direction
    control = control_labels(types, y, seed=0)
    r = train_probe(X, y, groups, "classification", control)
    assert r.accuracy > 0.85 and r.baseline < 0.6
    assert r.control_accuracy < 0.65 and r.selectivity > 0.25
    assert r.ci_low <= r.accuracy <= r.ci_high and r.ci_high - r.ci_low < 0.2


def test_splits_are_by_document():
    """A document fingerprint that leaks the label helps only if documents straddle the split."""
    g = np.random.default_rng(1)
    groups = np.repeat(np.arange(80), 10)
    y = g.integers(0, 2, size=80)[groups]  # one label per document
    X = np.eye(80)[groups] + 0.01 * g.normal(size=(800, 80))  # one-hot document identity
    r = train_probe(X, y, groups, "classification")
    assert r.accuracy < 0.7  # near chance: no test document was seen in training


def test_regression_and_mlp_probes():
    g = np.random.default_rng(2)
    groups = np.repeat(np.arange(50), 8)
    X = g.normal(size=(400, 12))
    y = X @ g.normal(size=12) + 0.1 * g.normal(size=400)
    r = train_probe(X, y, groups, "regression", control=g.permutation(y))
    assert r.accuracy > 0.95 and r.baseline <= 0.0 and r.control_accuracy < 0.2
    m = train_probe(X, (y > 0).astype(int), groups, "classification", kind="mlp")
    assert m.accuracy > 0.8


def test_control_labels_are_constant_per_type():
    types = np.array([3, 1, 3, 2, 1, 3])
    labels = np.array([0, 1, 1, 0, 1, 0])
    c = control_labels(types, labels, seed=4)
    assert c[0] == c[2] == c[5] and c[1] == c[4]
    assert set(c) <= set(labels)


def _documents_with_a_planted_label(seed: int, n_docs: int = 150, dim: int = 16):
    """One example per document; the label is written weakly into dimension 0."""
    g = np.random.default_rng(seed)
    y = g.integers(0, 2, size=n_docs)
    X = g.normal(size=(n_docs, dim)).astype(np.float32)
    X[:, 0] += 3.0 * (y - 0.5)
    return X, y, np.arange(n_docs)


def test_split_is_by_document_and_deterministic():
    groups = np.repeat(np.arange(40), 3)
    a, b = split_by_document(groups, seed=3), split_by_document(groups, seed=3)
    sets = [set(groups[ix]) for ix in (a.train, a.val, a.test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sum(map(len, sets)) == 40 and len(sets[2]) == 12 and len(sets[1]) == 8
    assert all(np.array_equal(x, z) for x, z in [(a.train, b.train), (a.test, b.test)])


def test_permutation_null_sits_at_chance_where_the_probe_succeeds():
    X, y, groups = _documents_with_a_planted_label(0, n_docs=200)
    split = split_by_document(groups, seed=0)
    features = {0: X, 1: X[:, ::-1].copy()}
    accuracy = fit_and_test(features, y, split, "classification")[2]
    null = permutation_null(features, y, groups, split, "classification", n_permutations=8)
    assert accuracy > 0.85
    assert abs(np.mean(null) - 0.5) < 0.1 and max(null) < 0.7, null
    with pytest.raises(ValueError, match="one label per document"):
        permutation_null(features, (np.arange(200) % 2), np.arange(200) // 2, split_by_document(
            np.arange(200) // 2), "classification")  # fmt: skip


def test_the_layer_is_chosen_on_validation_never_on_test():
    """Layer 0 carries the label in the train and validation documents only; layer 1 carries it
    everywhere. Test accuracy is best at layer 1 yet validation picks layer 0 when layer 0 is
    better there -- and the selection function is never handed test rows."""
    g = np.random.default_rng(5)
    n = 300
    y = g.integers(0, 2, size=n)
    groups = np.arange(n)
    split = split_by_document(groups, seed=0)
    layer0 = g.normal(size=(n, 8))
    layer0[:, 0] += 6.0 * (y - 0.5)  # clean on train / validation ...
    layer0[split.test, 0] = g.normal(size=len(split.test))  # ... pure noise on test
    layer1 = g.normal(size=(n, 8))
    layer1[:, 0] += 2.0 * (y - 0.5)  # weaker, but everywhere
    features = {0: layer0, 1: layer1}
    test_best = max(features, key=lambda k: fit_and_test({k: features[k]}, y, split,
                                                          "classification")[2])  # fmt: skip
    chosen, _, score = fit_and_test(features, y, split, "classification")
    assert test_best == 1 and chosen.layer == 0 and score < 0.65

    # the choice does not move whatever the test rows hold: make layer 1 perfect on test only
    leaked = {k: v.copy() for k, v in features.items()}
    leaked[1][split.test, 0] = 100.0 * (y[split.test] - 0.5)
    again = fit_and_test(leaked, y, split, "classification")[0]
    assert (again.layer, again.strength, again.val_score) == (0, chosen.strength, chosen.val_score)


def test_bag_of_tokens_recovers_a_label_of_token_identity():
    """A label that is a function of which tokens the document holds is the lexical baseline's
    to find: bag-of-tokens gets it, so a probe must beat it to claim more than token identity."""
    g = np.random.default_rng(7)
    vocab, n_docs = 50, 240
    sequences = [g.integers(0, vocab, size=30).tolist() for _ in range(n_docs)]
    y = np.array([int(7 in s) for s in sequences])  # does the document contain token 7?
    bow = bag_of_tokens(sequences, [[0]] * n_docs, vocab, document_mean=True)
    assert bow.shape == (n_docs, vocab) and bow.sum() == 30 * n_docs
    split = split_by_document(np.arange(n_docs), seed=1)
    _, _, score = fit_and_test({"bow": bow}, y, split, "classification")
    assert score > 0.9 and max(np.mean(y), 1 - np.mean(y)) < 0.8
    # position probes see their causal context and the token they read
    row = bag_of_tokens([[3, 4, 3, 9]], [[2]], vocab, document_mean=False).toarray()[0]
    assert row[3] == 2 and row[4] == 1 and row[9] == 0 and row[vocab + 3] == 1


def test_context_labels_depend_on_what_came_before():
    """The same token gets different labels in different places: seen before or not, how far
    back it last occurred, inside a string or not, how many brackets are open."""
    from labkit.analysis.probe_tasks import context_labels

    ids = [5, 6, 5, 7, 6, 5]
    assert context_labels("seen_before", ids, [], "") == [(0, 0), (1, 0), (2, 1), (3, 0),
                                                          (4, 1), (5, 1)]  # fmt: skip
    far = [1] + [2 + i for i in range(40)] + [1]  # token 1 again 41 tokens later
    assert context_labels("since_last", [5, 5, 6, 5], [], "") == [(1, 0), (3, 0)]
    assert context_labels("since_last", far, [], "") == [(41, 2)]
    code = 'x = f(a, "(b")\ny = [c]\n'
    words = [(0, 1), (4, 5), (5, 6), (6, 7), (9, 13), (13, 14), (15, 16), (19, 20), (20, 21)]
    # tokens: x, f, (, a, "(b", ), y, [, c
    strings = dict(context_labels("in_string", [0] * len(words), words, code))
    depth = dict(context_labels("bracket_depth", [0] * len(words), words, code))
    assert [strings[i] for i in range(9)] == [0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert [depth[i] for i in range(9)] == [0, 0, 0, 1, 1, 0, 0, 0, 1]  # "(" in a string is text
    cut = dict(context_labels("in_string", [0, 0], [(0, 1), (4, 9)], 'x = """never closed'))
    assert cut == {0: 0}  # past where Python's tokenizer stops, no label is made up


def test_context_labels_need_the_positions_they_are_read_at():
    from labkit.analysis.probe_tasks import validate_spec

    spec = {"name": "t", "source": {"kind": "world"}, "label": {"kind": "seen_before"},
            "positions": {"kind": "span", "type": "person"}, "control": "token_type"}  # fmt: skip
    with pytest.raises(ValueError, match="needs positions all_tokens"):
        validate_spec(spec)
    spec.update(label={"kind": "repeat_mention"}, positions={"kind": "all_tokens"})
    with pytest.raises(ValueError, match="needs span positions"):
        validate_spec(spec)


def test_beats_all_needs_the_ci_above_every_bar():
    assert beats_all(0.8, {"null": 0.5, "init": 0.7, "bow": 0.79, "majority": 0.6})
    assert not beats_all(0.8, {"null": 0.5, "init": 0.7, "bow": 0.8})  # not beyond
    assert not beats_all(0.8, {"null": 0.5, "init": None})  # a missing baseline is not beaten


def test_probe_with_baselines_reports_every_baseline():
    X, y, groups = _documents_with_a_planted_label(2, n_docs=200)
    g = np.random.default_rng(3)
    sequences = [g.integers(0, 20, size=10).tolist() for _ in groups]
    bow = bag_of_tokens(sequences, [[0]] * len(groups), 20, document_mean=True)
    init = {0: g.normal(size=X.shape), 1: g.normal(size=X.shape)}
    r = probe_with_baselines({0: X, 1: X[:, ::-1].copy()}, y, groups, "classification",
                             "document", init_features=init, bow=bow, n_null=3)  # fmt: skip
    assert r["accuracy"] > 0.85 and r["n_test_documents"] == 60
    assert r["null"] < 0.7 and r["init_baseline"] < 0.7 and r["bow_baseline"] < 0.7
    assert r["ci"][0] <= r["accuracy"] <= r["ci"][1] and r["beats_all_baselines"]
    no_init = probe_with_baselines({0: X}, y, groups, "classification", "document", bow=bow,
                                   n_null=2)  # fmt: skip
    assert no_init["init_baseline"] is None and not no_init["beats_all_baselines"]


def test_probe_digit_on_the_ci_run(reference, tmp_path, capsys):
    out = tmp_path / "digit.json"
    assert (
        main(
            [
                "probe",
                "--layer",
                "1",
                "--target",
                "digit",
                "--run",
                str(reference),
                "--json",
                str(out),
                "--max-documents",
                "60",
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    assert {
        "layer",
        "milestone",
        "tokens",
        "accuracy",
        "control_accuracy",
        "selectivity",
        "baseline",
        "ci_low",
        "ci_high",
    } <= set(rows[0])
    final = max(rows, key=lambda r: r["tokens"])
    assert final["layer"] == 1 and final["accuracy"] > final["control_accuracy"]
    assert len({r["milestone"] for r in rows}) >= 3
    assert "accuracy / control / selectivity" in capsys.readouterr().out


# since_last's bucketed distances make the slowest fit (~30 s): run with the slow suite
SLOW_SPECS = {"since_last"}


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(p.stem, marks=pytest.mark.slow) if p.stem in SLOW_SPECS else p.stem
        for p in sorted(PROBES.glob("*.yaml"))
    ],
)
def test_every_shipped_probe_spec_runs(reference, spec, tmp_path):
    out = tmp_path / "r.json"
    last = sorted((reference / "checkpoints").glob("tokens_*"))[-1]
    assert (
        main(
            [
                "probe",
                "--layer",
                "all",
                "--target",
                spec,
                "--checkpoint",
                str(last),
                "--json",
                str(out),
                "--max-documents",
                "80",
                # the CI corpus's four code documents vary in string and bracket labels only
                # past the 64 tokens the reference trained on: read the model's whole context
                "--max-len",
                "256",
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    assert [r["layer"] for r in rows] == [0, 1]
    assert all(np.isfinite(r["accuracy"]) for r in rows)


def test_probe_reads_the_trained_context_unless_told_and_never_past_the_model(reference, capsys):
    last = str(sorted((reference / "checkpoints").glob("tokens_*"))[-1])
    argv = ["probe", "--layer", "0", "--target", "code_bracket_depth", "--checkpoint", last,
            "--max-documents", "80"]  # fmt: skip
    assert main(argv) == 2  # 64 tokens of four code documents: one bracket depth only
    assert "single class" in capsys.readouterr().err
    assert main([*argv, "--max-len", "512"]) == 2
    assert "max_len 512 exceeds the model's max_seq_len 256" in capsys.readouterr().err
    assert main([*argv, "--max-len", "0"]) == 2
    assert "max_len must be >= 2 tokens, got 0" in capsys.readouterr().err


def test_probe_errors_list_the_valid_choices(reference, capsys):
    assert main(["probe", "--layer", "1", "--target", "nope", "--run", str(reference)]) == 2
    assert "targets in" in capsys.readouterr().err
    assert (
        main(
            ["probe", "--layer", "1", "--target", "digit", "--run", str(reference), "--site", "kv"]
        )
        == 2
    )
    assert "sites:" in capsys.readouterr().err
    assert (
        main(
            [
                "probe",
                "--layer",
                "7",
                "--target",
                "digit",
                "--run",
                str(reference),
                "--max-documents",
                "10",
            ]
        )
        == 2
    )
    assert "layers 0..1" in capsys.readouterr().err


def test_induction_cka_and_latent_commands_on_the_ci_run(reference, tmp_path, capsys):
    ind, ck, lat = tmp_path / "ind.json", tmp_path / "cka.json", tmp_path / "lat.json"
    assert (
        main(
            [
                "induction",
                "--run",
                str(reference),
                "--json",
                str(ind),
                "--seq-len",
                "16",
                "--batch",
                "2",
            ]
        )
        == 0
    )
    result = json.loads(ind.read_text())
    assert len(result["milestones"]) >= 3 and "phase_change" in result
    first = result["milestones"][0]
    assert np.array(first["second_copy"]).shape == (2, 4) and np.array(first["tl"]).shape == (2, 4)
    assert np.array(first["copying"]).shape == (2, 4)
    assert 0 < result["uniform_tl_score"] < result["uniform_score"] < 1
    assert (
        main(
            ["cka", "--runs", str(reference), str(reference), "--documents", "8", "--json", str(ck)]
        )
        == 0
    )
    cka = json.loads(ck.read_text())
    final = max(cka["to_final"], key=lambda k: int(k.split("_")[-1]))
    assert np.allclose(cka["to_final"][final], 1.0) and np.allclose(
        np.diag(cka["between"][final]), 1.0
    )
    # a run against itself: every layer is its own most similar layer
    assert cka["layer_identification"][final]["fraction"] == 1.0
    assert (
        main(
            [
                "latent",
                "--run",
                str(reference),
                "--milestones",
                "24576",
                "--documents",
                "4",
                "--json",
                str(lat),
            ]
        )
        == 0
    )
    rows = json.loads(lat.read_text())["rows"]
    assert [r["layer"] for r in rows] == [0, 1]
    assert rows[0]["kv_variance_explained"]["k"][-1] == pytest.approx(1.0, abs=1e-9)
    assert 1 <= rows[0]["participation_ratio"] <= 32


def test_probes_against_baselines_on_the_ci_run(reference):
    """The study layer on a real run: every baseline filled in, the init baseline reported
    missing (never invented) without a step-0 milestone, the digit-count baseline for
    number_value, and the same numbers twice."""
    from labkit.analysis.probe_tasks import load_probe_spec
    from labkit.analysis.probing import probe_set
    from labkit.run import open_run
    from labkit.study import probe_against_baselines

    run = open_run(reference)
    final = run.trained[-1]
    assert run.init is None  # the CI run has no step-0 milestone
    sets = {
        t: probe_set(load_probe_spec(t, max_documents=40), final.data_path, run.model.max_seq_len)
        for t in ("domain", "number_value")
    }
    res = probe_against_baselines(final, None, sets, n_null=2)
    for r in res.values():
        assert r["init_baseline"] is None and "save_init" in r["init_missing"]
        assert not r["beats_all_baselines"] and r["n_test_documents"] == 12
        assert r["bow_baseline"] is not None and r["layer"] in range(run.model.n_layers)
    assert (
        res["domain"]["null_kind"] == "permutation" and "digit_count_baseline" not in res["domain"]
    )
    assert res["number_value"]["null_kind"] == "control_task"
    assert res["number_value"]["digit_count_baseline"] is not None
    token = res["number_value"]  # a token target: a position baseline and a selectivity
    assert token["position_baseline"] is not None and "position" in token["beats"]
    assert token["selectivity"] == pytest.approx(token["accuracy"] - token["null"])
    assert "position_baseline" not in res["domain"] and "selectivity" not in res["domain"]
    # an earlier milestone standing in for step 0 exercises the init path
    again = probe_against_baselines(final, run.milestones[0], {"domain": sets["domain"]}, n_null=2)
    assert again["domain"]["init_milestone"] == run.milestones[0].name
    assert again["domain"]["init_baseline"] is not None
    assert {k: v for k, v in again["domain"].items() if "init" not in k and k != "beats"} == {
        k: v for k, v in res["domain"].items() if "init" not in k and k != "beats"
    }
