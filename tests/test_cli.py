import math

import pytest

from labkit.cli import main
from labkit.config import PRESETS


def test_models_table_lists_every_preset(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert f"\n{name} " in out
    big = next(line for line in out.splitlines() if line.startswith("mla-1.3b"))
    assert "1.73B" in big and "28,288" in big and big.rstrip().endswith("0.10%")


def test_models_json(capsys):
    import json

    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tiny-gqa"]["n_kv_heads"] == 2


def test_unknown_command_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit):
        main(["probe-all"])
    assert "choose from" in capsys.readouterr().err


def test_model_benchmark_runs():
    """Not a timing test: the benchmark must run end to end and report finite throughputs."""
    from labkit.bench import model as bench

    args = ["--presets", "tiny-gqa", "--rounds", "1", "--steps", "1", "--batch", "2", "--seq", "32"]
    results = bench.main(args)
    assert {"labkit", "transformers", "labkit_no_hooks"} <= set(results["tiny-gqa"])
    assert all(math.isfinite(v) and v > 0 for v in results["tiny-gqa"].values())


def test_analysis_benchmark_runs():
    """Not a timing test: the analysis benchmark must run end to end."""
    from labkit.bench import analysis as bench

    out = bench.main(
        [
            "--preset",
            "tiny-mla",
            "--sequences",
            "4",
            "--seq-len",
            "32",
            "--rounds",
            "1",
            "--cka-tokens",
            "1500",
        ]
    )
    assert set(out["collection"]) == {"labkit", "bridge", "labkit_bf16"}
    assert all(math.isfinite(v) and v > 0 for v in out["collection"].values())
    assert out["cka"]["diag_min"] == pytest.approx(1.0, abs=1e-6)
