"""The study's figure pipeline: deterministic files, notebook conventions, the headless build
against CI-sized runs trained through `make paper`'s driver, and JupyterLab serving .py notebooks."""

import ast
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jupytext
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from conftest import CI, ROOT  # noqa: E402

from labkit.cli import main  # noqa: E402
from labkit.config import DataConfig, TrainConfig, params_gap  # noqa: E402
from labkit.figures import (  # noqa: E402
    NotebookFailed,
    build,
    check_image,
    inject_parameters,
    notebooks,
    save_figure,
    use_style,
)
from labkit.run import find_runs, open_run, pick_milestones  # noqa: E402

sys.path.insert(0, str(ROOT / "pretrain"))
import paper  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def _figure(seed: int = 0):
    use_style()
    fig, (a, b) = plt.subplots(1, 2)
    a.imshow(np.random.default_rng(seed).random((6, 6)))
    b.plot([1, 2, 3], [3, 1, 2], label="µ-line")
    b.legend()
    b.set_title("déjà vu")
    return fig


# --------------------------------------------------------------------------------- files
def test_save_figure_is_byte_identical_and_records_its_sources(tmp_path):
    a = save_figure(_figure(), "x_fig", tmp_path / "a", sources=[tmp_path])
    time.sleep(1.1)  # a timestamp in the files would now differ
    b = save_figure(_figure(), "x_fig", tmp_path / "b", sources=[tmp_path])
    for fa, fb in zip(a, b, strict=True):
        assert fa.read_bytes() == fb.read_bytes(), fa.name
        check_image(fa)
    record = json.loads((tmp_path / "a" / ".records" / "x_fig.json").read_text())
    assert record["files"] == ["x_fig.png", "x_fig.pdf"]
    assert record["sources"] == [str(tmp_path.resolve())]
    assert save_figure(_figure(1), "x_fig", tmp_path / "c")[0].read_bytes() != a[0].read_bytes()
    with pytest.raises(ValueError, match="figure name"):
        save_figure(_figure(), "../escape", tmp_path)


def test_check_image_rejects_broken_files(tmp_path):
    empty, blank, cut = tmp_path / "e.png", tmp_path / "b.png", tmp_path / "c.pdf"
    empty.write_bytes(b"")
    fig = plt.figure()
    fig.savefig(blank)
    plt.close(fig)
    pdf = save_figure(_figure(), "ok", tmp_path)[1]
    cut.write_bytes(pdf.read_bytes()[: len(pdf.read_bytes()) // 2])
    for path, message in [(empty, "empty"), (blank, "blank"), (cut, "complete PDF")]:
        with pytest.raises(ValueError, match=message):
            check_image(path)


def test_parameters_are_injected_after_the_parameters_cell():
    nb = jupytext.reads("# %%\nimport os\n\n# %% tags=['parameters']\nx = 1\n\n# %%\nprint(x)\n",
                        fmt="py:percent")  # fmt: skip
    inject_parameters(nb, {"x": 2, "runs": ["/a b"]})
    assert nb.cells[2].source == "x = 2\nruns = ['/a b']"
    assert nb.cells[2].metadata["tags"] == ["injected-parameters"]
    with pytest.raises(ValueError, match="parameters"):
        inject_parameters(jupytext.reads("# %%\nx = 1\n", fmt="py:percent"), {"x": 2})


# ----------------------------------------------------------------------------- notebooks
def test_notebooks_are_paired_and_follow_the_conventions():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06", "07"]
    for path in NOTEBOOKS:
        py = jupytext.read(path)
        paired = path.with_suffix(".ipynb")
        assert paired.exists(), f"{paired.name} missing: run `jupytext --sync {path}`"
        ipynb = jupytext.read(paired)
        assert [c.source for c in py.cells] == [c.source for c in ipynb.cells], (
            f"{path.name} and {paired.name} differ: run `jupytext --sync {path}`"
        )
        code = [c for c in py.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), path.name
        params = {t.id for node in ast.parse(code[0].source).body for t in node.targets}
        assert {"runs", "smoke", "figures_dir"} <= params, path.name
        # No analysis logic: the only imports are labkit, numpy and matplotlib.
        for node in ast.walk(ast.parse(jupytext.writes(py, fmt="py:percent"))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                )
                assert all(m.split(".")[0] in {"labkit", "numpy", "matplotlib"} for m in mods), (
                    f"{path.name} imports {mods}"
                )
        assert "save_figure(" in path.read_text(), path.name


def test_notebook_selection_names_unknown_ones():
    assert [p.stem for p in notebooks(["02", "04_sim"])] == ["02_induction", "04_similarity"]
    with pytest.raises(ValueError, match="unknown notebooks"):
        notebooks(["09"])


# --------------------------------------------------------------------------------- study
def test_every_scale_of_the_study_loads_and_pairs_twins_within_two_percent():
    for scale_name in ("cpu", "gpu", "1.3b"):
        scale, runs = paper.load_study(paper.STUDY, scale_name)
        core = {"mla-dense", "gqa-dense", "mla-control", "gqa-control"}
        assert core <= set(runs)
        presets, budgets, seeds = {}, set(), {}
        for name, run in runs.items():
            cmd = paper.train_command(scale, name, run, ROOT / "runs" / "x" / name)
            sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
            cfg = TrainConfig.load(ROOT / scale["config"], sets)
            assert cfg.data.mix == run["mix"]
            # step 0 is the probes' init baseline and the CKA floor of every scale
            assert cfg.checkpoint.save_init, (scale_name, name)
            if cfg.data.config:  # a corpus built for the study: its mix spans exactly one run
                data = DataConfig.load(ROOT / cfg.data.config)
                assert data.total_tokens == cfg.train.tokens, (scale_name, data.total_tokens)
                assert run["mix"] in data.mixes
            presets[name] = cfg.model_config(vocab_size=4096)
            budgets.add((cfg.train.tokens, cfg.train.batch_tokens))
            seeds[name] = cfg.seed
            assert presets[name].attention == run["attention"]
        gap = params_gap(presets["mla-dense"], presets["gqa-dense"])
        assert gap < 0.02, (scale_name, gap)
        assert len(budgets) == 1, budgets  # equal token budgets for every run
        assert len({seeds[n] for n in core}) == 1  # the four cells: one seed, one data order
        # more seeds of the MLA dense cell (CKA's seed pairs), and kv variants of the frontier
        assert seeds["mla-dense-seed2"] != seeds["mla-dense"]
        ranks = {p.kv_lora_rank for n, p in presets.items() if p.attention == "mla"}
        kv_heads = {p.n_kv_heads for n, p in presets.items() if p.attention == "gqa"}
        assert len(ranks) >= 2 and len(kv_heads) >= 2, (ranks, kv_heads)
    with pytest.raises(SystemExit, match="allowed values"):
        paper.load_study(paper.STUDY, "tpu")


@pytest.fixture(scope="session")
def study_runs(ci_data, tmp_path_factory):
    """MLA and GQA on the dense mix at CI size, trained through `make paper`'s driver."""
    root = tmp_path_factory.mktemp("study")
    study = root / "study.toml"
    study.write_text(
        '[runs.mla-dense]\nattention = "mla"\nmix = "dense"\n'
        '[runs.gqa-dense]\nattention = "gqa"\nmix = "dense"\n'
        f'[scales.ci]\nconfig = "{CI}"\npreset = "tiny-{{attention}}"\n'
        f'runs_dir = "{root / "runs"}"\nnproc = 1\n'
        f'set = ["data.dir={ci_data}", "log.tensorboard=false", "checkpoint.every_tokens=4096"]\n'
    )
    cmd = [sys.executable, str(ROOT / "pretrain" / "paper.py"), "--study", str(study)]
    cmd += ["--scale", "ci", "--no-figures"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0 and again.stdout.count("finished") == 2, again.stdout
    return root / "runs"


def test_study_runs_are_found_and_milestones_picked(study_runs):
    runs = find_runs([study_runs])
    assert {(r.name, r.attention, r.mix) for r in runs} == {
        ("gqa-dense", "gqa", "dense"),
        ("mla-dense", "mla", "dense"),
    }
    assert all(r.finished for r in runs)
    ms = runs[0].milestones
    picked = pick_milestones(ms, 3)
    assert len(picked) == 3 and picked[0] == ms[0] and picked[-1] == ms[-1]
    assert pick_milestones(ms, None) == ms
    with pytest.raises(FileNotFoundError, match="not a labkit run"):
        open_run(study_runs.parent)
    with pytest.raises(FileNotFoundError, match="make paper"):
        find_runs([study_runs / "mla-dense" / "checkpoints"])


def test_a_model_field_every_run_sets_alike_is_the_design_not_a_variant():
    from labkit.config import ModelConfig
    from labkit.run.catalogue import Run, mark_shared_settings, pick_run, seed_groups

    def run(name, seed, **model):
        train = {"seed": seed, "data": {"mix": "dense"}, "model": {"preset": "tiny-mla", **model}}
        return Run(Path(name), ModelConfig.preset("tiny-mla"), train, [])

    runs = [run("mla-dense", 1, n_layers=3), run("mla-dense-seed2", 2, n_layers=3),
            run("mla-dense-rank16", 1, n_layers=3, kv_lora_rank=16)]  # fmt: skip
    assert runs[0].variant == {"n_layers": 3}  # alone, n_layers is a variant of the preset
    mark_shared_settings(runs)
    assert [r.variant for r in runs] == [{}, {}, {"kv_lora_rank": 16}]
    assert pick_run(runs, "mla", "dense").name == "mla-dense"
    assert [len(g) for g in seed_groups(runs).values()] == [2]


def test_milestone_picks_keep_step_0_apart_and_spread_the_trained_ones_in_log_tokens():
    """The study's layout -- step 0, then a milestone every 0.1M tokens up to 2.05M -- asked for 8
    gives 8: step 0, the first and last trained milestones and 5 between, spaced in log(tokens)
    (spacing step 0 as if it sat at 1 token would leave 4, with a straight line across the gap)."""
    from types import SimpleNamespace

    ms = [SimpleNamespace(tokens=t) for t in [0, *range(102_400, 2_048_001, 102_400)]]
    picked = [m.tokens for m in pick_milestones(ms, 8)]
    assert len(picked) == 8 and picked[:2] == [0, 102_400] and picked[-1] == 2_048_000
    gaps = np.diff(np.log(picked[1:]))
    assert gaps.max() < 3 * gaps.min(), picked  # evenly spread in log(tokens), not bunched
    no_init = [m.tokens for m in pick_milestones(ms[1:], 4)]
    assert len(no_init) == 4 and no_init[0] == 102_400 and no_init[-1] == 2_048_000


def test_smoke_build_writes_every_declared_figure_deterministically(study_runs, tmp_path):
    """What CI checks: every notebook runs in smoke mode against the CI runs, every figure in the
    manifest exists and is a valid image, and a rebuild from the same checkpoints is identical."""
    out = tmp_path / "figures"
    assert main(["figures", "--runs", str(study_runs), "--smoke", "--out", str(out)]) == 0
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["smoke"] is True and len(manifest["runs"]) == 2
    notebooks_seen = {fig["notebook"] for fig in manifest["figures"].values()}
    assert notebooks_seen == {f"notebooks/{p.name}" for p in NOTEBOOKS}
    for name, fig in manifest["figures"].items():
        assert fig["files"] == [f"{name}.png", f"{name}.pdf"]
        for f in fig["files"]:
            check_image(out / f)
        for path, sha in fig["checkpoints"].items():
            where = Path(path) if Path(path).is_absolute() else ROOT / path
            meta = json.loads((where / "meta.json").read_text())
            assert meta["checksums"]["model.safetensors"] == sha
    # A figure from checkpoints names them; the MLA-vs-GQA comparison ran.
    assert manifest["figures"]["02_top_heads"]["checkpoints"]
    assert "04_cka_mla_vs_gqa" in manifest["figures"]
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(["MANIFEST.json", "results.json", *(
        f for fig in manifest["figures"].values() for f in fig["files"])])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert {"training", "induction", "cka", "cka_layer_identification", "tasks"} <= set(results)
    for name, row in results["induction"].items():
        assert {"max_score", "crossing_tokens", "milestone_tokens", "copy_loss_drop"} <= set(row)
        assert row["milestone_tokens"] == sorted(row["milestone_tokens"]), name
    # the dense runs are scored on the splits they trained on, never on the control corpus
    assert all("control" not in r["final_val"] for r in results["training"].values())
    probes = results["probes"]
    assert len(probes) == 2
    for run in probes.values():
        for result in run.values():
            assert {"accuracy", "ci", "null", "init_baseline", "bow_baseline", "layer",
                    "n_test_documents", "beats_all_baselines", "majority_baseline"} <= set(result)  # fmt: skip
        assert "digit_count_baseline" in run["number_value"]

    again = tmp_path / "again"
    build([study_runs], again, smoke=True, names=["01", "04"], log=lambda *_: None)
    rebuilt_results = json.loads((again / "results.json").read_text())
    for section in ("training", "cka", "cka_layer_identification"):  # same numbers, rebuilt
        assert rebuilt_results[section] == results[section], section
    rebuilt = json.loads((again / "MANIFEST.json").read_text())["figures"]
    assert rebuilt
    for fig in rebuilt.values():
        for f in fig["files"]:
            assert (again / f).read_bytes() == (out / f).read_bytes(), f


def test_a_failing_notebook_stops_the_build_and_shows_the_cell(study_runs, tmp_path, capsys):
    book = tmp_path / "nbs"
    book.mkdir()
    (book / "00_broken.py").write_text(
        '# %% tags=["parameters"]\nruns = []\nsmoke = False\nfigures_dir = "."\n\n'
        '# %%\nvalue = 41\nraise RuntimeError(f"boom {value + 1}")\n'
    )
    with pytest.raises(NotebookFailed) as err:
        build([study_runs], tmp_path / "out", directory=book, log=lambda *_: None)
    assert "00_broken.py failed" in str(err.value)
    assert "value = 41" in str(err.value) and "boom 42" in str(err.value)


# ------------------------------------------------------------------------------- JupyterLab
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyter_lab_serves_py_notebooks_as_notebooks(tmp_path):
    port, token = _free_port(), "labkit-test"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
           "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={ROOT}", "--allow-root"]  # fmt: skip
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path), JUPYTER_DATA_DIR=str(tmp_path))
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}/api/contents/notebooks/00_dataset.py?token={token}"
    try:
        deadline, reply = time.time() + 60, None
        while time.time() < deadline and reply is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    reply = json.loads(r.read())
            except OSError:
                assert server.poll() is None, "jupyter lab exited"
                time.sleep(0.5)
        assert reply is not None, "jupyter lab did not answer within 60 s"
        assert reply["type"] == "notebook"
        assert reply["content"]["cells"][0]["cell_type"] == "markdown"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _lookup(results: dict, key: str):
    """results.json value at a dotted key; run names may hold dots, so match greedily."""
    node, rest = results, key
    while rest:
        for cut in sorted({len(rest)} | {i for i, c in enumerate(rest) if c == "."}, reverse=True):
            head = rest[:cut]
            if isinstance(node, dict) and head in node:
                node, rest = node[head], rest[cut + 1 :]
                break
            if isinstance(node, list) and head.isdigit() and int(head) < len(node):
                node, rest = node[int(head)], rest[cut + 1 :]
                break
        else:
            raise KeyError(key)
    return node


@pytest.mark.parametrize("page, least", [("docs/study.md", 10), ("README.md", 4)])
def test_study_report_numbers_are_read_from_results_json(page, least):
    """Every number the study report (docs/study.md) and the README's study section cite as
    `NUMBER (`key`)` is results.json's value at that key, as rounded in the text (a trailing %
    reads the value as a fraction)."""
    results = json.loads((ROOT / "figures" / "results.json").read_text())
    section = (ROOT / page).read_text()
    if page == "README.md":
        section = section.split("## The miniature study")[1].split("\n## ")[0]
    cited = re.findall(r"(-?\d[\d,]*(?:\.\d+)?)( ?%)? \(`([A-Za-z0-9_.\-]+)`\)", section)
    assert len(cited) >= least, f"{page}'s study section cites too few results.json keys"
    for number, percent, key in cited:
        value = _lookup(results, key)
        assert isinstance(value, int | float), (key, value)
        shown = float(number.replace(",", ""))
        decimals = len(number.split(".")[1]) if "." in number else 0
        expected = round(value * (100 if percent else 1), decimals)
        assert shown == pytest.approx(expected, abs=10**-decimals / 2 + 1e-9), (key, number, value)


def test_make_paper_refuses_a_parallel_count_below_one(capsys):
    assert paper.main(["--parallel", "0", "--no-figures"]) == 2
    assert "--parallel must be >= 1, got 0" in capsys.readouterr().err


def test_results_json_that_is_damaged_is_named_and_never_merged_over(tmp_path):
    from labkit.figures import load_results, save_results

    path = tmp_path / "results.json"
    for damaged, message in (("{not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list")):
        path.write_text(damaged)
        for call in (lambda: load_results(tmp_path), lambda: save_results(tmp_path, "s", {"x": 1})):
            with pytest.raises(ValueError, match=message) as err:
                call()
            assert str(path) in str(err.value)
        assert path.read_text() == damaged


@pytest.mark.slow
def test_the_lab_in_a_real_browser_runs_a_py_notebook_against_a_ci_run(study_runs, tmp_path):
    """`make lab RUNS=...` started headless; Debian's chromium (with its chromedriver) opens
    notebooks/01_training.py, which jupytext serves as a notebook; Run All against a CI run shows
    the figures under their cells and writes them into that run's figures/, never into the
    committed figures/ nor into the notebook files (autosave is off for this lab)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    for binary in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        assert Path(binary).exists(), f"{binary} missing: apt-get install chromium chromium-driver"
    run_dir = study_runs / "mla-dense"
    watched = [
        *sorted((ROOT / "notebooks").glob("01_training.*")),
        ROOT / "figures" / "01_loss.png",
    ]
    before = {p: p.read_bytes() for p in watched}
    settings = tmp_path / "settings" / "@jupyterlab" / "docmanager-extension"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text('{"autosave": false}')
    port, token = _free_port(), "labkit-browser-test"
    lab_args = (f"--no-browser --port={port} --ServerApp.ip=127.0.0.1 --allow-root "
                f"--IdentityProvider.token={token} --LabApp.expose_app_in_browser=True")  # fmt: skip
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))  # fmt: skip
    server = subprocess.Popen(
        ["make", "-C", str(ROOT), "lab", f"RUNS={run_dir}", f"LAB_ARGS={lab_args}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = None
    app = "window.jupyterapp.shell.currentWidget"

    def wait(script: str, seconds: float):
        deadline = time.time() + seconds
        while time.time() < deadline:
            value = driver.execute_script(script)
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"timed out after {seconds} s waiting for: {script}")

    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, "make lab exited"
                time.sleep(0.5)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        driver.get(f"http://127.0.0.1:{port}/lab/tree/notebooks/01_training.py?token={token}")
        wait(f"return {app} && {app}.context && {app}.context.path", 120)
        assert driver.execute_script(f"return !!{app}.content.model.cells"), "not a notebook"
        status = f"const k = {app}.sessionContext.session && {app}.sessionContext.session.kernel"
        wait(f"{status}; return k && k.status === 'idle'", 180)
        driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        cells = (f"const cs = {app}.content.model.cells; const out = [];"
                 "for (let i = 0; i < cs.length; i++) out.push(cs.get(i).toJSON()); return out")  # fmt: skip
        done = (f"{status}; const cs = {app}.content.model.cells; let last = null;"
                "for (let i = 0; i < cs.length; i++) { const c = cs.get(i).toJSON();"
                " if (c.cell_type === 'code') last = c; }"
                "return k && k.status === 'idle' && last && last.execution_count")  # fmt: skip
        wait(done, 300)
        outputs = [o for c in driver.execute_script(cells) for o in c.get("outputs", [])]
        assert not [o for o in outputs if o["output_type"] == "error"], outputs
        images = [o for o in outputs if "image/png" in o.get("data", {})]
        assert len(images) >= 4, [o["output_type"] for o in outputs]  # 01_training's figures
        assert driver.find_elements("css selector", ".jp-OutputArea-output img")
    finally:
        if driver is not None:
            driver.quit()
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
    assert (run_dir / "figures" / "01_loss.png").exists()
    assert {p: p.read_bytes() for p in watched} == before
