"""docs/transformer-lens-walkthrough.md runs as written: its Python blocks on the CI run (MLA) and
its GQA twin, in one namespace, from a scratch directory; its shell block (lm-eval's command lines)
in the slow suite, with --limit."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PAGE = ROOT / "docs" / "transformer-lens-walkthrough.md"
RUNS = {"mla": "runs/paper-mini/mla-dense", "gqa": "runs/paper-mini/gqa-dense"}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), flags=re.S)


def on_the_ci_runs(code: str, runs: dict[str, Path]) -> str:
    for kind, path in RUNS.items():
        assert f'"{path}"' in code or path not in code, kind
        code = code.replace(f'"{path}"', repr(str(runs[kind])))
    return code


def test_the_walkthroughs_python_runs_on_mla_and_gqa(
    reference, reference_gqa, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # it exports into exported/
    code = blocks("python")
    assert len(code) >= 8 and RUNS["gqa"] in code[0]
    namespace: dict = {"__name__": "walkthrough"}
    for i, block in enumerate(code):
        exec(
            compile(
                on_the_ci_runs(block, {"mla": reference, "gqa": reference_gqa}),
                f"block {i}",
                "exec",
            ),
            namespace,
        )
    assert set(namespace["models"]) == {"mla", "gqa"}
    assert {m.cfg.attention for m in namespace["models"].values()} == {"mla", "gqa"}


@pytest.mark.slow
def test_the_walkthroughs_lm_eval_commands_give_the_same_scores(reference, ci_data, tmp_path):
    from test_eval import _assert_same_scores, _lm_eval_results

    (script,) = blocks("bash")
    script = script.replace(f"RUN={RUNS['mla']}", f"RUN={reference}")
    script = script.replace("DATA=data/paper-mini", f"DATA={ci_data}")
    script = re.sub(r"^(labkit lm-eval|lm_eval) (.*)$", r"\1 \2 --limit 4", script, flags=re.M)
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"], OMP_NUM_THREADS="1")
    proc = subprocess.run(
        ["bash", "-euc", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_scores(
        _lm_eval_results(tmp_path / "results" / "labkit"),
        _lm_eval_results(tmp_path / "results" / "hf"),
    )
