"""The probing engine on planted signals, and `labkit probe` on the CI run with every shipped spec."""

import json
from pathlib import Path

import numpy as np
import pytest

from labkit.analysis.probing import control_labels, train_probe
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


@pytest.mark.parametrize("spec", sorted(p.stem for p in PROBES.glob("*.yaml")))
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
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    assert [r["layer"] for r in rows] == [0, 1]
    assert all(np.isfinite(r["accuracy"]) for r in rows)


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
    assert np.array(first["induction"]).shape == (2, 4) and np.array(first["copying"]).shape == (
        2,
        4,
    )
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
