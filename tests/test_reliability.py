"""Run directories and data sets that cannot be lost or corrupted: one group of tests
per finding — (1) outputs never destroy what labkit did not write, (2) a run directory is one
run, (3) no input hangs the loader, (4) no code from data, (5) checksums that cannot be bypassed,
(6) a torn metrics line, (7) one-line errors, (8) the smaller ones (validation, stale temp dirs,
duplicate rows, corrupted resume states, signals, a stopped rank)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkit import run as ckpt
from labkit.config import DataConfig, TrainConfig
from labkit.data import shards
from labkit.data.build import build, load_manifest
from labkit.data.loader import MixedData
from labkit.errors import (
    DataError,
    OutputExistsError,
    RunDirError,
    TokenizerError,
    describe,
    one_line_errors,
)
from labkit.run import Milestone, RunWriter, resolve_config
from labkit.run.checkpoint import write_sums
from tests.conftest import CI, ROOT, RUN, TORCHRUN

LABKIT = [sys.executable, "-m", "labkit.cli"]
DATA_CI = ROOT / "pretrain" / "configs" / "data" / "ci.toml"


def trainer(args, *, timeout=240, env=None, torchrun=False):
    """pretrain/run.py with exactly `args` (no --config unless given)."""
    cmd = (TORCHRUN if torchrun else [sys.executable]) + [RUN, *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def fresh(ci_data, run_dir, *extra):
    """Arguments of a fresh single-process CI run into `run_dir`."""
    return ["--config", CI, "--set", f"data.dir={ci_data}", "--set", "log.tensorboard=false",
            "--run-dir", str(run_dir), *extra]  # fmt: skip


def one_line(stderr: str) -> str:
    bars = ("it/s]", "s/it]", "examples/s]")  # a progress bar running when the error came
    stderr = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", stderr)  # a nested bar's cursor moves
    lines = [x for x in stderr.replace("\r", "\n").splitlines() if x.strip()]
    lines = [x for x in lines if not x.rstrip().endswith(bars)]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def metric_steps(run_dir: Path) -> list[int]:
    """Steps of the training rows of metrics.jsonl (none yet: [])."""
    try:
        text = (run_dir / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return []
    rows = [json.loads(x) for x in text.splitlines() if x.endswith("}")]
    return [r["step"] for r in rows if "loss" in r]


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail instead of hanging: SIGALRM raises TimeoutError after `seconds`."""

    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def finished(ci_data, tmp_path_factory):
    """A finished single-process CI run of 8 steps (resume states at 4 and 8)."""
    run_dir = tmp_path_factory.mktemp("rel") / "finished"
    proc = trainer(
        fresh(
            ci_data,
            run_dir,
            "--set",
            "train.tokens=8192",
            "--set",
            "checkpoint.resume_every_steps=4",
        )  # fmt: skip
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run_dir


@pytest.fixture
def copy_of(tmp_path):
    def copy(src: Path, name: str = "copy") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        (dst / ".lock").unlink(missing_ok=True)
        return dst

    return copy


def crashed(run_dir: Path, after_step: int | None = None) -> Path:
    """`run_dir` as a crash would have left it: no final.json (a finished run is not resumed)
    and, with `after_step`, none of the resume states written after that step."""
    (run_dir / "final.json").unlink()
    for state in (run_dir / "resume").glob("step_*"):
        if after_step is not None and Milestone.read(state).step > after_step:
            shutil.rmtree(state)
    return run_dir


# ============================================================ 1. outputs never destroy user data
def test_data_build_refuses_a_directory_it_did_not_write(tmp_path):
    mine = tmp_path / "mydocs"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    proc = subprocess.run(
        [*LABKIT, "data", "build", "--config", str(DATA_CI), "--out", str(mine)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "not a labkit data set" in one_line(proc.stderr) and "--overwrite" in proc.stderr
    assert (mine / "thesis.tex").read_text() == "years of work"
    # a file at --out, and foreign content at <out>.partial / <out>.old, are refused too
    cfg = DataConfig.load(DATA_CI)
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me")
    with pytest.raises(OutputExistsError, match="is a file"):
        build(cfg, afile, quiet=True)
    assert afile.read_text() == "keep me"
    for suffix in (".partial", ".old"):
        sibling = tmp_path / f"fresh{suffix}"
        sibling.mkdir()
        (sibling / "keep.txt").write_text("mine")
        with pytest.raises(OutputExistsError, match=f"fresh{suffix}"):
            build(cfg, tmp_path / "fresh", quiet=True)
        assert (sibling / "keep.txt").read_text() == "mine"
        shutil.rmtree(sibling)


def test_trainer_does_not_build_data_over_a_foreign_directory(tmp_path):
    mine = tmp_path / "mydocs"
    mine.mkdir()
    (mine / "a.txt").write_text("mine")
    proc = trainer(
        [
            "--config",
            CI,
            "--set",
            f"data.dir={mine}",
            "--set",
            f"data.config={DATA_CI}",
            "--run-dir",
            str(tmp_path / "run"),
        ]  # fmt: skip
    )
    assert proc.returncode == 2 and "not a labkit data set" in proc.stderr
    assert (mine / "a.txt").read_text() == "mine"
    assert not (tmp_path / "run").exists()  # a failed start leaves no stub run dir


def test_figures_refuse_a_foreign_directory_and_remove_only_their_own_files(tmp_path):
    from labkit.figures import build as build_figures
    from labkit.figures import stale_figures

    out = tmp_path / "pictures"
    out.mkdir()
    (out / "holiday.png").write_bytes(b"not ours")
    with pytest.raises(OutputExistsError, match="no MANIFEST.json"):
        build_figures([tmp_path], out)
    assert (out / "holiday.png").read_bytes() == b"not ours"
    # with a manifest: only files the previous build listed may go
    (out / "old_fig.png").write_bytes(b"ours")
    previous = {"figures": {"old_fig": {"files": ["old_fig.png", "old_fig.pdf"]}}}
    (out / "MANIFEST.json").write_text(json.dumps(previous))
    assert stale_figures(out, wanted={"new.png"}) == [out / "old_fig.png"]


def test_export_refuses_a_foreign_directory_and_replaces_its_own(tmp_path):
    from labkit.config import ModelConfig
    from labkit.export import from_hf, to_hf
    from labkit.model import LabModel

    model = LabModel(ModelConfig(vocab_size=300, d_model=32, n_layers=1, n_heads=2, d_ff=64,
                                 kv_lora_rank=8, qk_nope_head_dim=12, qk_rope_head_dim=4,
                                 v_head_dim=16))  # fmt: skip
    theirs = tmp_path / "someone-elses-model"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(OutputExistsError, match="not a labkit export"):
        to_hf(model, theirs)
    assert json.loads((theirs / "config.json").read_text()) == {"model_type": "gpt2"}
    out = to_hf(model, tmp_path / "ours")
    to_hf(model, out)  # an earlier export is replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours", "someone-elses-model"]
    assert from_hf(out).cfg.d_model == 32


# ============================================================ 2. a run directory is one run
def test_resume_uses_the_pinned_config_and_refuses_changes(finished, copy_of):
    run_dir = crashed(copy_of(finished), after_step=4)  # killed after its step-4 resume state
    pinned = (run_dir / "config.json").read_bytes()
    # the hint the trainer prints: no --config, so the run's own config (not demo.toml)
    proc = trainer(["--run-dir", str(run_dir), "--resume", "--set", "log.every_steps=2"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((run_dir / "final.json").read_text())["config"]["train"]["tokens"] == 8192
    assert (run_dir / "config.json").read_bytes() == pinned
    history = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["start", "finish", "resume", "finish"]
    assert history[2]["changed"] == {"log.every_steps": [1, 2]}  # a safe change, recorded
    assert history[0]["data_passes"] == history[2]["data_passes"] and history[0]["data_passes"]
    assert "data passes: " in proc.stdout
    # a different learning rate, mix or model is refused, naming the keys
    proc = trainer(["--run-dir", str(run_dir), "--resume", "--set", "train.lr=0.1"])
    assert proc.returncode == 2 and "train.lr (0.003 -> 0.1)" in one_line(proc.stderr)
    for change in ("data.mix='control'", "model.kv_lora_rank=16", "train.tokens=3000000"):
        with pytest.raises(RunDirError, match=re.escape(change.split("=")[0])):
            resolve_config(run_dir, None, [change], CI)
    with pytest.raises(RunDirError, match="train.tokens"):  # e.g. demo.toml's 3M tokens
        resolve_config(run_dir, str(ROOT / "pretrain" / "configs" / "demo.toml"), [], CI)
    assert (run_dir / "config.json").read_bytes() == pinned


def test_a_non_empty_run_dir_needs_resume_and_an_empty_one_starts_fresh(ci_data, finished,
                                                                        copy_of, tmp_path):  # fmt: skip
    run_dir = copy_of(finished)
    rows = (run_dir / "metrics.jsonl").read_bytes()
    proc = trainer(fresh(ci_data, run_dir))
    assert proc.returncode == 2 and "--resume" in one_line(proc.stderr)
    assert (run_dir / "metrics.jsonl").read_bytes() == rows  # two runs were not merged
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "x.txt").write_text("x")
    proc = trainer(fresh(ci_data, stranger, "--resume"))
    assert proc.returncode == 2 and "holds no run" in proc.stderr
    empty = tmp_path / "empty"
    proc = trainer(fresh(ci_data, empty, "--resume", "--set", "train.tokens=2048"))
    assert proc.returncode == 0 and "starting a fresh one" in proc.stdout


def test_a_second_trainer_is_refused_while_the_first_holds_the_lock(ci_data, finished, copy_of):
    run_dir = copy_of(finished)
    holder = RunWriter.open(run_dir, resume=True)  # this test process holds the run dir
    try:
        proc = trainer(["--run-dir", str(run_dir), "--resume"])
        assert proc.returncode == 2
        assert f"pid {os.getpid()}" in one_line(proc.stderr) and "in use" in proc.stderr
    finally:
        holder.close()
    with pytest.raises(RunDirError, match="in use"):
        first = RunWriter.open(run_dir, resume=True)
        try:
            RunWriter.open(run_dir, resume=True)
        finally:
            first.close()


def test_killing_a_trainer_hands_the_run_to_the_one_waiting_on_the_lock(ci_data, tmp_path):
    """A trains; B (--resume --lock-wait) waits on the lock; A is SIGKILLed mid-run; B takes the
    lock, resumes from A's last state and finishes with every step logged exactly once."""
    run_dir = tmp_path / "shared"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    args = fresh(ci_data, run_dir, "--set", "checkpoint.resume_every_steps=4",
                 "--set", "log.every_steps=1")  # fmt: skip
    first = subprocess.Popen([sys.executable, RUN, *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env, cwd=ROOT)  # fmt: skip
    deadline_at = time.time() + 120
    while time.time() < deadline_at and not list((run_dir / "resume").glob("step_*")):
        time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)  # mid-run, holding the lock, until B is queued behind it
    log = tmp_path / "second.log"
    with open(log, "w") as out:
        second = subprocess.Popen([sys.executable, RUN, *args, "--resume", "--lock-wait", "300"],
                                  stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)  # fmt: skip
    while time.time() < deadline_at and "waiting for the lock" not in log.read_text():
        assert second.poll() is None, log.read_text()[-2000:]
        time.sleep(0.05)
    assert "held by pid" in log.read_text()
    first.send_signal(signal.SIGKILL)
    first.wait()
    second.wait(timeout=240)
    text = log.read_text()
    assert second.returncode == 0, text[-2000:]
    assert "resumed from" in text
    steps = metric_steps(run_dir)
    assert steps == list(range(1, 25))  # no step twice, none missing
    events = [json.loads(x)["event"] for x in (run_dir / "history.jsonl").read_text().splitlines()]
    assert events == ["start", "resume", "finish"]


# ============================================================ 3. the loader cannot hang
def test_a_truncated_shard_is_an_error_not_a_hang(ci_data, tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "ci"
    shutil.copytree(ci_data, data)
    shard = next((data / "train").glob("synthetic_*.bin"))
    with open(shard, "r+b") as f:
        f.truncate(1000)
    with deadline(60), pytest.raises(DataError, match=f"{shard.name} is 1,000 bytes"):
        MixedData(data, "dense", 24576, 0)
    # even past verification, reading cannot spin on a short shard
    monkeypatch.setattr("labkit.data.loader.verify_shards", lambda *a: None)
    stream = MixedData(data, "dense", 24576, 0)
    with deadline(60), pytest.raises(DataError, match="corrupted"):
        for stage in range(len(stream.stages)):
            stream.stream(stage).read(0, stream.stream(stage).total)


def test_shard_checksums_are_verified_once_and_cached(ci_data, tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "ci"
    shutil.copytree(ci_data, data)
    hashed = []
    real = shards.sha256_file
    monkeypatch.setattr(shards, "sha256_file", lambda p: hashed.append(p) or real(p))
    MixedData(data, "dense", 24576, 0)
    files = len(hashed)
    assert files >= 4
    MixedData(data, "dense", 24576, 0)
    assert len(hashed) == files  # the second open only stats the files
    shard = next((data / "train").glob("synthetic_*.bin"))
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0xFF  # same size, different bytes
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="does not match its SHA-256"):
        MixedData(data, "dense", 24576, 0)


# ============================================================ 4. no code from data
def test_task_suite_is_data_only_and_code_in_a_data_dir_is_never_run(ci_data, tmp_path):
    from labkit.eval.runner import load_tasks
    from labkit.eval.tasks import build_tasks, check_tasks_are_data

    tasks = build_tasks(ci_data, tmp_path / "tasks", n=20)
    assert not (tasks / "utils.py").exists()
    for y in tasks.glob("*.yaml"):
        assert "!function" not in y.read_text()
    check_tasks_are_data(tasks)
    # squad's exact match is lm-eval's own metric, with SQuAD's normalisation as its arguments
    loaded = load_tasks(["labkit_squad"], tasks)
    task = loaded["tasks"]["labkit_squad"]
    doc = {"answer": "the Red Fox", "context": "", "answerable": True}
    assert task.process_results(doc, ["red fox."]) == {"exact_match": 1.0}
    assert task.process_results(doc, ["a red cat"]) == {"exact_match": 0.0}
    # a data set whose tasks would import or template code is refused before lm-eval sees it
    marker = tmp_path / "pwned"
    (tasks / "utils.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(DataError, match="utils.py is code in a task directory"):
        load_tasks(["labkit_squad"], tasks)  # a Python file is refused wherever it is
    (tasks / "utils.py").unlink()  # each YAML case on its own
    bad = {
        "!function": "process_results: !function utils.anything\n",
        "template": "doc_to_text: \"{{ ''.__class__.__mro__ }}\"\n",
        "include": "include: /elsewhere/task.yaml\n",
    }
    for line in bad.values():
        y = tasks / "labkit_squad.yaml"
        original = y.read_text()
        y.write_text(original + line)
        with pytest.raises(DataError, match="labkit_squad.yaml"):
            load_tasks(["labkit_squad"], tasks)
        y.write_text(original)
    assert not marker.exists()


# ============================================================ 5. checksums cannot be bypassed
def test_every_checkpoint_file_is_covered_and_a_missing_checksum_is_an_error(
    finished, tmp_path, monkeypatch
):
    monkeypatch.delenv("LABKIT_TRUST_UNVERIFIED", raising=False)
    src = ckpt.list_milestones(finished)[-1]
    names = sorted(p.name for p in src.path.iterdir() if p.name != "SHA256SUMS")
    listed = sorted(x.split("  ")[1] for x in (src / "SHA256SUMS").read_text().splitlines())
    assert listed == names and "meta.json" in listed
    cases = {
        "meta.json": lambda d: (d / "meta.json").write_text(
            (d / "meta.json").read_text().replace('"data_dir": "', '"data_dir": "/evil')
        ),
        "SHA256SUMS": lambda d: (d / "SHA256SUMS").unlink(),
        "not covered": lambda d: (d / "notes.txt").write_text("added after the save"),
    }
    for match, damage in cases.items():
        d = tmp_path / match.replace(" ", "_")
        shutil.copytree(src, d)
        damage(d)
        with pytest.raises(ckpt.CheckpointError, match=match):
            ckpt.load(d)
    ckpt.verify(tmp_path / "SHA256SUMS", trust_unverified=True)  # the explicit escape hatch
    monkeypatch.setenv("LABKIT_TRUST_UNVERIFIED", "1")
    ckpt.load(tmp_path / "SHA256SUMS")


def test_checkpoint_renames_are_made_durable(tmp_path, monkeypatch):
    import labkit.run.checkpoint as writer
    from labkit.config import ModelConfig

    synced = []
    monkeypatch.setattr(writer, "fsync_dir", lambda p: synced.append(Path(p)))
    cfg = ModelConfig(vocab_size=300, d_model=32, n_layers=1, n_heads=2, d_ff=64, kv_lora_rank=8,
                      qk_nope_head_dim=12, qk_rope_head_dim=4, v_head_dim=16)  # fmt: skip
    from labkit.model import LabModel

    state = LabModel(cfg).state_dict()
    path = tmp_path / "checkpoints" / "best"
    ckpt.save_checkpoint(path, state, cfg, {"step": 1, "tokens": 1})
    ckpt.save_checkpoint(path, state, cfg, {"step": 2, "tokens": 2})  # the swap path
    assert synced == [path.parent, path.parent]
    ckpt.verify(path)
    assert Milestone.read(path).step == 2 and sorted(p.name for p in path.parent.iterdir()) == [
        "best"
    ]


# ============================================================ 6. a torn metrics line
def test_a_torn_metrics_line_is_cut_on_resume_with_a_warning(finished, copy_of):
    run_dir = crashed(copy_of(finished))  # power lost after the last resume state
    loss = json.loads((finished / "final.json").read_text())["final"]["loss"]
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "tokens": 92')  # power lost mid-append
    proc = trainer(["--run-dir", str(run_dir), "--resume"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{run_dir / 'metrics.jsonl'}: cut a torn last line" in proc.stdout
    # resumed at its last step, it finishes with the last step's loss, not NaN
    assert json.loads((run_dir / "final.json").read_text())["final"]["loss"] == loss
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        json.loads(line)
    # a damaged line that is not the last one is not silently dropped
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\nGARBAGE\n{"step": 2}\n')
    run = RunWriter.open(run_dir, resume=True)
    try:
        with pytest.raises(RunDirError, match="line 2"):
            run.repair_metrics(8)
    finally:
        run.close()


# ============================================================ 7. one line, always
@pytest.mark.parametrize(
    "override, key",
    [
        ('model.rope_theta="abc"', "rope_theta"),
        ("train.seq_len_schedule=[[0,0]]", "seq_len_schedule"),
    ],
)
def test_bad_config_values_are_one_line_and_leave_no_run_dir(ci_data, tmp_path, override, key):
    run_dir = tmp_path / "run"
    proc = trainer(fresh(ci_data, run_dir, "--set", override), timeout=120)
    assert proc.returncode == 2 and key in one_line(proc.stderr)
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.kv_lora_rank=4096", "kv_lora_rank (4096) must be at most d_model"),
        ("train.micro_batch=100000", "exceeds train.batch_tokens"),
        ("name='../../outside'", "name must start with"),
        ("train.lr=-1", "train.lr must be > 0"),
        ("train.beta2=1.5", "train.beta2 must be < 1"),
        ("eval.tokens_per_split=0", "eval.tokens_per_split must be >= 1"),
        ("model.n_layers=2.5", "must be an integer"),
        ("parallel.timeout_s=0", "parallel.timeout_s must be > 0"),
    ],
)
def test_config_validation_names_the_key_and_the_range(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig.load(CI, [override])


def test_bad_data_and_checkpoints_are_one_line_on_every_command(ci_data, finished, tmp_path):
    # an empty manifest
    empty = tmp_path / "empty-data"
    empty.mkdir()
    (empty / "manifest.json").write_text("{}")
    proc = trainer(fresh(empty, tmp_path / "r1"))
    assert proc.returncode == 2 and "manifest.json lacks" in one_line(proc.stderr)
    with pytest.raises(DataError, match="lacks"):
        load_manifest(empty)
    # a corrupted checkpoint through the CLI, and --debug for the traceback
    bad = tmp_path / "bad"
    shutil.copytree(ckpt.list_milestones(finished)[-1], bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
    cmd = [*LABKIT, "induction", "--checkpoint", str(bad)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "model.safetensors is corrupted" in one_line(proc.stderr)
    proc = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    # world.people = 0
    cfg = tmp_path / "world0.toml"
    cfg.write_text(DATA_CI.read_text() + "\n")
    cfg.write_text(cfg.read_text().replace("people = 160", "people = 0"))
    proc = subprocess.run([*LABKIT, "data", "build", "--config", str(cfg), "--out",
                           str(tmp_path / "w")], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "world.people must be >= 1" in one_line(proc.stderr)


def test_a_garbage_tokenizer_names_the_file(tmp_path):
    from labkit.data.tokenizer import load_tokenizer

    bad = tmp_path / "tokenizer.json"
    bad.write_text("this is not a tokenizer")
    with pytest.raises(TokenizerError, match=str(bad)):
        load_tokenizer(bad)


def test_disk_full_and_ctrl_c_are_one_line(capsys):
    def full() -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.jsonl")

    def interrupted() -> int:
        raise KeyboardInterrupt

    assert one_line_errors("labkit x", full) == 2
    assert "no space left on the device while writing /runs/x/metrics.jsonl" in one_line(
        capsys.readouterr().err
    )
    assert one_line_errors("labkit x", interrupted) == 130
    assert "interrupted" in capsys.readouterr().err
    assert describe(KeyError("mixes")) == "missing key 'mixes'"


# ============================================================ 8. the smaller findings
def test_config_rules_cover_every_numeric_field():
    from labkit.config import check_fields, declared_settings

    declared = {key: allowed for key, _, _, allowed, _ in declared_settings(TrainConfig)}
    declared |= {key: allowed for key, _, _, allowed, _ in declared_settings(DataConfig)}
    for key in ("train.tokens", "train.micro_batch", "parallel.timeout_s", "world.people"):
        assert declared[key].startswith((">", "one of")), key
    cfg = TrainConfig()
    cfg.eval.every_steps = 0
    with pytest.raises(ValueError, match="eval.every_steps must be >= 1"):
        check_fields(cfg)
    data = DataConfig()
    data.curation.max_digits = 3.0
    with pytest.raises(ValueError, match="curation.max_digits must be <= 1"):
        data.validate()
    data = DataConfig()
    data.code.files = -1  # no declared rule: a number must still be >= 0
    with pytest.raises(ValueError, match="code.files must be >= 0"):
        data.validate()


def test_stale_temp_dirs_are_cleaned_and_an_interrupted_swap_is_undone(finished, copy_of):
    run_dir = copy_of(finished)
    checkpoints = run_dir / "checkpoints"
    (checkpoints / ".tokens_000000009999.tmp-424242").mkdir()
    (checkpoints / ".tokens_000000009999.tmp-424242" / "model.safetensors").write_bytes(b"x")
    (checkpoints / "best").rename(checkpoints / ".best.old-424242")  # killed mid-swap
    (run_dir / "resume" / ".step_00000099.tmp-424242").mkdir()
    run = RunWriter.open(run_dir, resume=True)
    try:
        actions = run.clean_stale_temp_dirs()
    finally:
        run.close()
    assert len(actions) == 3
    assert not list(checkpoints.glob(".*")) and not list((run_dir / "resume").glob(".*"))
    ckpt.verify(checkpoints / "best")


def test_a_kill_before_the_first_resume_state_leaves_no_duplicate_rows(ci_data, tmp_path):
    run_dir = tmp_path / "early"
    args = fresh(ci_data, run_dir, "--set", "train.tokens=4096", "--set", "log.every_steps=1")
    assert trainer(args).returncode == 0
    shutil.rmtree(run_dir / "resume")  # as if killed before the first resume state
    (run_dir / "final.json").unlink()
    proc = trainer([*args, "--resume"])
    assert proc.returncode == 0 and "no resume state yet" in proc.stdout
    assert metric_steps(run_dir) == [1, 2, 3, 4]


def test_every_resume_state_corrupted_is_an_error_not_a_restart(finished, copy_of):
    run_dir = crashed(copy_of(finished))
    for state in (run_dir / "resume").glob("step_*"):
        (state / "optimizer.pt").write_bytes(b"garbage")
    proc = trainer(["--run-dir", str(run_dir), "--resume"])
    assert proc.returncode == 2 and "every resume state" in proc.stderr
    assert "Traceback" not in proc.stderr and metric_steps(run_dir)[-1] == 8  # nothing restarted


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_a_resume_state_and_prints_the_resume_command(ci_data, tmp_path, sig, code):
    run_dir = tmp_path / "signalled"
    args = fresh(ci_data, run_dir, "--set", "log.every_steps=1", "--set",
                 "checkpoint.resume_every_steps=100")  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, RUN, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)  # fmt: skip
    deadline_at = time.time() + 120
    while time.time() < deadline_at and max(metric_steps(run_dir), default=0) < 5:
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert f"--run-dir {run_dir} --resume" in out
    states = sorted((run_dir / "resume").glob("step_*"))
    assert len(states) == 1 and not (run_dir / "final.json").exists()
    ckpt.verify(states[0])
    stopped_at = Milestone.read(states[0]).step
    assert 5 <= stopped_at < 24 and max(metric_steps(run_dir)) == stopped_at
    proc = trainer(["--run-dir", str(run_dir), "--resume"])
    assert proc.returncode == 0 and f"step {stopped_at}" in proc.stdout
    assert metric_steps(run_dir) == list(range(1, 25))


@pytest.mark.slow
def test_a_stopped_rank_fails_the_group_within_the_timeout(ci_data, tmp_path):
    """SIGSTOP one of two ranks: with parallel.timeout_s = 20 the other fails its collective and
    torchrun ends the group in well under the 30 minutes of PyTorch's default."""
    run_dir = tmp_path / "stopped"
    args = fresh(ci_data, run_dir, "--set", "parallel.timeout_s=20", "--set", "log.every_steps=1")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([*TORCHRUN, RUN, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd=ROOT,
                            start_new_session=True)  # fmt: skip
    deadline_at = time.time() + 180
    while time.time() < deadline_at and max(metric_steps(run_dir), default=0) < 3:
        time.sleep(0.05)
    pids = []  # the two workers (torchrun starts each in a session of its own)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
            if int(fields[1]) == proc.pid and b"run.py" in cmdline:  # torchrun's children
                pids.append(int(stat.parent.name))
    assert len(pids) == 2, pids
    os.kill(pids[-1], signal.SIGSTOP)
    start = time.time()
    try:
        proc.wait(timeout=240)
    finally:
        for pid in [proc.pid, *pids]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    elapsed = time.time() - start
    print(f"group failed {elapsed:.0f} s after a rank stopped (timeout_s 20)")
    assert proc.returncode != 0 and elapsed < 240, elapsed


def test_resolve_config_pins_and_names_every_changed_key(finished):
    cfg, changes = resolve_config(finished, None, ["log.every_steps=3"], CI)
    assert cfg.train.tokens == 8192 and changes == {"log.every_steps": (1, 3)}
    with pytest.raises(RunDirError, match=r"train.seq_len \(64 -> 32\)"):
        resolve_config(finished, None, ["train.seq_len=32"], CI)


# ============================================================ 9. the third round (issue 30)
# One test per finding: each reproduces the attack of the report and checks it now fails safely.
def test_lm_eval_command_never_runs_code_from_a_task_directory(ci_data, finished, tmp_path,
                                                               capsys):  # fmt: skip
    """Finding 1: `labkit lm-eval --include_path DIR` (the command `labkit eval build-tasks`
    prints) with a planted utils.py + `!function`, or a template reaching os.system."""
    import yaml

    from labkit.cli import main
    from labkit.eval.tasks import build_tasks

    tasks = build_tasks(ci_data, tmp_path / "tasks", n=5)
    marker = tmp_path / "pwned"
    (tasks / "utils.py").write_text(
        f"def pwn(docs):\n    open({str(marker)!r}, 'w').write('x')\n    return docs\n"
    )
    task = yaml.safe_load((tasks / "labkit_qa.yaml").read_text()) | {"task": "pwn"}
    planted = tasks / "pwn.yaml"
    planted.write_text(yaml.safe_dump(task) + "process_docs: !function utils.pwn\n")
    milestone = str(ckpt.list_milestones(finished)[-1])
    base = ["lm-eval", "--model", "labkit", "--model_args", f"checkpoint={milestone}",
            "--device", "cpu", "--limit", "2"]  # fmt: skip
    assert main([*base, "--include_path", str(tasks), "--tasks", "pwn"]) == 2
    assert "utils.py is code in a task directory" in one_line(capsys.readouterr().err)
    (tasks / "utils.py").unlink()  # the tag alone, the task named as a file
    assert main([*base, "--tasks", str(planted)]) == 2
    assert "pwn.yaml is not plain YAML (a `!function` tag" in one_line(capsys.readouterr().err)
    jinja = f"{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}"
    planted.write_text(yaml.safe_dump(task | {"doc_to_text": jinja}))
    assert main([*base, f"--include_path={tasks}", "--tasks", "pwn"]) == 2
    assert "pwn.yaml: doc_to_text: a template beyond" in one_line(capsys.readouterr().err)
    assert main([*base, "--include", str(tasks), "-tpwn"]) == 2  # argparse's abbreviation
    assert "pwn.yaml: doc_to_text" in one_line(capsys.readouterr().err)
    # and lm-eval itself, whatever reaches it: a sandboxed template, no foreign `!function`
    import lm_eval.utils
    from jinja2.exceptions import SecurityError
    from lm_eval.tasks._yaml_loader import load_yaml

    from labkit.eval.tasks import harden_lm_eval

    harden_lm_eval()
    with pytest.raises(SecurityError):
        lm_eval.utils.apply_template(jinja, {})
    assert lm_eval.utils.apply_template("{{context}}", {"context": "plain"}) == "plain"
    (tasks / "utils.py").write_text(
        f"open({str(marker)!r}, 'w')\ndef pwn(docs):\n    return docs\n"
    )
    planted.write_text(yaml.safe_dump(task) + "process_docs: !function utils.pwn\n")
    with pytest.raises(DataError, match="never runs code from a task directory"):
        load_yaml(planted, resolve_func=True)
    assert not marker.exists()


def test_a_rebuild_never_deletes_files_the_build_did_not_write(ci_data, tmp_path, capsys):
    """Finding 2: `labkit data build --out DIR` over an earlier build holding the user's own
    src.jsonl (the build's own source) and a NOTES.txt."""
    from labkit.cli import main

    data = tmp_path / "mine"
    shutil.copytree(ci_data, data)
    rows = [
        json.dumps({"text": f"note {i}: " + "a sentence of my own text. " * 12}) for i in range(30)
    ]
    (data / "src.jsonl").write_text("\n".join(rows) + "\n")
    (data / "NOTES.txt").write_text("years of work")
    config = tmp_path / "mine.toml"
    off = "".join(f"[{s}]\nenabled = false\n" for s in ("synthetic", "retrieval", "control", "code",
                                                          "prose"))  # fmt: skip
    config.write_text(f'name = "mine"\n{off}[sources.mine]\npath = "{data / "src.jsonl"}"\n')
    assert main(["data", "build", "--config", str(config), "--out", str(data), "--quiet"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "holds 2 file(s) its build did not write (NOTES.txt, src.jsonl)" in line
    assert "nothing was touched" in line
    # --overwrite may replace foreign files, but never the build's own input
    assert main(["data", "build", "--config", str(config), "--out", str(data), "--overwrite"]) == 2
    assert "would delete its own input" in one_line(capsys.readouterr().err)
    assert (data / "NOTES.txt").read_text() == "years of work"
    assert (data / "src.jsonl").read_text().count("\n") == 30
    assert (data / "manifest.json").read_bytes() == (ci_data / "manifest.json").read_bytes()
    # what may be replaced: only what the manifest lists, and a task suite built from it
    from labkit.data.build import foreign_files
    from labkit.eval.tasks import build_tasks

    for name in ("NOTES.txt", "src.jsonl"):
        (data / name).unlink()
    assert foreign_files(data) == []
    build_tasks(data, n=5)  # DATA/tasks
    assert foreign_files(data) == []
    (data / "tasks" / "mine.txt").write_text("x")
    (data / "text" / "extra").mkdir()
    assert foreign_files(data) == ["tasks/mine.txt", "text/extra/"]


def test_resume_of_a_finished_run_says_so_and_changes_nothing(finished, copy_of, tmp_path):
    """Finding 3: the printed "after a crash" command on a finished run."""
    run_dir = copy_of(finished)
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*")
              if p.is_file() and p.name != ".lock"}  # fmt: skip
    proc = trainer(["--run-dir", str(run_dir), "--resume"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    assert len(lines) == 1 and "is finished" in lines[0] and "nothing was changed" in lines[0]
    loss = json.loads(before[Path("final.json")])["final"]["loss"]
    assert f"final train loss {loss:.3f}" in lines[0] and "nan" not in proc.stdout
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*")
             if p.is_file() and p.name != ".lock"}  # fmt: skip
    assert after == before  # final.json, history.jsonl, metrics.jsonl: byte for byte
    assert not (tmp_path / "index.jsonl").exists()  # no record appended to the registry


def test_a_notebook_run_against_another_run_leaves_the_committed_figures_unchanged(finished):
    """Finding 4: a notebook executed as a notebook (`jupyter nbconvert --execute`) against a
    run of one's own, pointed at it the way its first cell says."""
    committed = ROOT / "figures"
    before = {p: p.read_bytes() for p in committed.rglob("*") if p.is_file()}
    for path in sorted((ROOT / "notebooks").glob("0*.py")):  # each says how, at the top
        assert "**Your own runs:** `make lab RUNS=runs/mine`" in path.read_text(), path.name
    env = dict(os.environ, LABKIT_RUNS=str(finished), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         "--output", str(finished / "figures" / "executed.ipynb"), "00_dataset.ipynb"],
        capture_output=True, text=True, cwd=ROOT / "notebooks", env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p: p.read_bytes() for p in committed.rglob("*") if p.is_file()} == before
    assert not (committed / ".records").exists()
    made = sorted(p.name for p in (finished / "figures").glob("00_*.png"))
    assert made == ["00_dimensions.png", "00_lengths.png", "00_sources.png"]


def test_a_tampered_tokenizer_is_refused_before_training_and_analysis(ci_data, finished,
                                                                      tmp_path):  # fmt: skip
    """Finding 5: two token ids swapped in the data set's tokenizer.json."""
    from labkit.study import eval_sequences

    data = tmp_path / "ci"
    shutil.copytree(ci_data, data)
    tok = json.loads((data / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = (next(t for t, i in vocab.items() if i == n) for n in (300, 301))
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two ids swapped: the file still loads
    (data / "tokenizer.json").write_text(json.dumps(tok))
    proc = trainer(fresh(data, tmp_path / "run"), timeout=120)
    assert proc.returncode == 2
    assert "tokenizer.json does not match the SHA-256" in one_line(proc.stderr)
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError, match="does not match the SHA-256"):
        eval_sequences(data, "general", 4, 32)  # what every analysis tokenizes with
    # a milestone without its own copy (older labkits) falls back to the data set's: checked
    old = tmp_path / "old-milestone"
    shutil.copytree(ckpt.list_milestones(finished)[-1], old)
    (old / "tokenizer.json").unlink()
    meta = json.loads((old / "meta.json").read_text()) | {"data_dir": str(data)}
    (old / "meta.json").write_text(json.dumps(meta))
    write_sums(old)
    with pytest.raises(DataError, match="does not match the SHA-256"):
        ckpt.load(old)


def test_an_empty_config_is_refused_naming_the_file(ci_data, tmp_path, capsys):
    """Finding 6: `--config /dev/null` (or only comments) was a full default run or corpus."""
    from labkit.cli import main

    proc = trainer(["--config", "/dev/null", "--run-dir", str(tmp_path / "run")], timeout=120)
    assert proc.returncode == 2 and "/dev/null is empty" in one_line(proc.stderr)
    assert not (tmp_path / "run").exists()
    comments = tmp_path / "comments.toml"
    comments.write_text("# a data set, some day\n\n")
    assert main(["data", "build", "--config", str(comments), "--out", str(tmp_path / "d")]) == 2
    assert f"{comments} is empty (or only comments)" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "d").exists()


def test_every_traceback_of_the_report_is_one_line(ci_data, finished, copy_of, tmp_path,
                                                   monkeypatch, capsys):  # fmt: skip
    """Finding 7: a number as text, a full disk under export, a damaged model.safetensors with
    --trust-unverified, a probe spec with a Python tag or bad YAML, a pickle in optimizer.pt,
    and all-NaN weights (which exported with rc 0)."""
    import pickle

    import torch

    import labkit.fileio
    from labkit.cli import main

    def last_line(code: int) -> str:
        err = capsys.readouterr().err
        assert code == 2, err
        return one_line(err)

    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text('{"text": "a sentence of text"}\n{"text": 12345}\n')
    config = tmp_path / "numbers.toml"
    config.write_text(
        f'name = "n"\n[synthetic]\nenabled = false\n[sources.mine]\npath = "{numbers}"\n'
    )
    line = last_line(main(["data", "build", "--config", str(config), "--out", str(tmp_path / "n")]))
    assert f"{numbers} line 2: 'text' is a number (12345), not a string" in line
    milestone = ckpt.list_milestones(finished)[-1]

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with monkeypatch.context() as m:
        m.setattr(labkit.fileio, "fsync_write", disk_full)
        line = last_line(main(["export", "--checkpoint", str(milestone), "--out",
                               str(tmp_path / "hf")]))  # fmt: skip
    assert "no space left on the device while writing" in line and "model.safetensors" in line
    assert not (tmp_path / "hf").exists()
    for name, damage in {"truncated": lambda b: b[: len(b) // 2],
                         "header": lambda b: b"\xff" * 8 + b[8:]}.items():  # fmt: skip
        old = tmp_path / f"unverified-{name}"
        shutil.copytree(milestone, old)
        (old / "SHA256SUMS").unlink()  # an older checkpoint: only --trust-unverified loads it
        (old / "model.safetensors").write_bytes(damage((old / "model.safetensors").read_bytes()))
        line = last_line(main(["--trust-unverified", "induction", "--checkpoint", str(old)]))
        assert "model.safetensors cannot be read as safetensors" in line, name
    marker = tmp_path / "pwned"
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "evil.yaml").write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    (specs / "broken.yaml").write_text("name: broken\nsource: {kind: world\n")
    for target, problem in (("evil", "a Python tag"), ("broken", "line 3")):
        line = last_line(main(["probe", "--layer", "0", "--target", target, "--probes-dir",
                               str(specs), "--checkpoint", str(milestone)]))  # fmt: skip
        assert f"{specs / target}.yaml is not a plain YAML probe spec" in line and problem in line
    run_dir = crashed(copy_of(finished, "pickled"), after_step=4)
    for state in (run_dir / "resume").glob("step_*"):

        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        (state / "optimizer.pt").write_bytes(pickle.dumps({"state": Payload()}))
        write_sums(state)  # as an attacker who rewrote the sums too
    proc = trainer(["--run-dir", str(run_dir), "--resume"])
    assert proc.returncode == 2 and "a pickle that could run code" in one_line(proc.stderr)
    assert "weights_only" not in proc.stderr and not marker.exists()
    nan = tmp_path / "nan-milestone"
    model, _ = ckpt.load(milestone)
    state = {k: torch.full_like(v, float("nan")) for k, v in model.state_dict().items()}
    ckpt.save_checkpoint(nan, state, model.cfg, json.loads((milestone / "meta.json").read_text()),
                         extra={"tokenizer.json": (milestone / "tokenizer.json").read_bytes()})  # fmt: skip
    line = last_line(main(["export", "--checkpoint", str(nan), "--out", str(tmp_path / "hf2")]))
    assert "hold NaN or inf" in line and not (tmp_path / "hf2").exists()


def test_the_unclear_one_liners_name_the_file_and_the_cause(ci_data, tmp_path, capsys):
    """Finding 8: an empty jsonl, a broken line, invalid UTF-8, a source curation empties,
    `--config DIR`, `--out` under a file, `--layer 1,x`, a garbage manifest of one's own."""
    from labkit.cli import main
    from labkit.data.curation import load_text_source

    cases = {
        "empty.jsonl": (b"", "is empty: it holds no documents"),
        "broken.jsonl": (b'{"text": "one"}\n{"text": "tw\n', "line 2 is not JSON"),
        "latin1.jsonl": (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "line 2 is not UTF-8 text"),
    }
    for name, (raw, message) in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(DataError, match=re.escape(f"{tmp_path / name} {message}")):
            load_text_source("mine", str(tmp_path / name))
    short = tmp_path / "short.jsonl"
    short.write_text('{"text": "too short"}\n{"text": "also far too short"}\n')
    off = "".join(f"[{s}]\nenabled = false\n" for s in ("synthetic", "retrieval", "control", "code",
                                                          "prose"))  # fmt: skip
    config = tmp_path / "short.toml"
    config.write_text(f'name = "s"\n{off}[sources.mine]\npath = "{short}"\neval_fraction = 0.0\n')
    assert main(["data", "build", "--config", str(config), "--out", str(tmp_path / "s"),
                 "--quiet"]) == 2  # fmt: skip
    notes = capsys.readouterr().err.splitlines()
    line = one_line("\n".join(x for x in notes if not x.startswith("note: eval split")))
    assert "curation removed every one of the 2 documents of source 'mine' (quality 2)" in line
    assert main(["data", "build", "--config", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert f"{tmp_path} is a directory: pass a TOML file" in one_line(capsys.readouterr().err)
    (tmp_path / "notes.txt").write_text("keep")
    assert main(["data", "build", "--config", str(DATA_CI), "--out",
                 str(tmp_path / "notes.txt" / "data")]) == 2  # fmt: skip
    assert f"{tmp_path / 'notes.txt'} is a file" in one_line(capsys.readouterr().err)
    assert main(["probe", "--layer", "1,x", "--target", "digit", "--checkpoint", "nowhere"]) == 2
    assert "--layer '1,x'" in one_line(capsys.readouterr().err)
    for name, config_hint in (("my-data", "YOUR_CONFIG.toml"), ("demo", "data/demo.toml")):
        garbage = tmp_path / name
        garbage.mkdir()
        (garbage / "manifest.json").write_text("garbage")
        with pytest.raises(DataError, match=re.escape(config_hint)):
            load_manifest(garbage)


def test_changes_to_the_users_text_are_on_the_card_and_short_probes_say_so(ci_data, tmp_path,
                                                                           capsys):  # fmt: skip
    """Finding 9: NFKC and PII redaction rewrote most of a user's documents, said only in the
    manifest; a probe asking for 300 documents used 258 without a note. Finding 10's card
    `--samples` now shows the user's source too."""
    from labkit.analysis.probe_tasks import build_probe_data
    from labkit.data.build import dataset_card, load_data_tokenizer, sample_documents

    rows = []
    for i in range(40):
        extra = " Write to ada@example.org about the \ufb01le." if i % 4 == 0 else ""
        body = " ".join(f"word{j} of the long note number {i}" for j in range(12))
        rows.append(json.dumps({"text": f"Note {i}. {body}.{extra}"}))
    (tmp_path / "mine.jsonl").write_text("\n".join(rows) + "\n")
    cfg = DataConfig.from_dict({
        "name": "card", "tokenizer": {"vocab_size": 300},
        **{s: {"enabled": False} for s in ("synthetic", "retrieval", "control", "code", "prose")},
        "sources": {"mine": {"path": str(tmp_path / "mine.jsonl"), "eval_fraction": 0.0}},
    })  # fmt: skip
    build(cfg, tmp_path / "card", quiet=True)
    card = dataset_card(tmp_path / "card").splitlines()
    assert "  normalize: changed the text of 10 of 40 documents (NFKC normalisation, control " \
           "characters removed)" in card  # fmt: skip
    assert "  pii: changed the text of 10 of 40 documents (10 <EMAIL>)" in card
    example = next(x for x in card if x.startswith("    - mine-") and "<EMAIL>" in x)
    assert "ada@example.org" in example  # before -> after, on the card
    assert "### mine: mine-0000000" in sample_documents(tmp_path / "card")
    capsys.readouterr()
    spec = {"name": "few", "source": {"kind": "data", "split": "eval_general", "documents": 5000},
            "positions": {"kind": "document_mean"}, "label": {"kind": "doc_label", "key": "format"}}  # fmt: skip
    data = build_probe_data(spec, load_data_tokenizer(ci_data), load_manifest(ci_data), ci_data)
    used = len(set(data.groups.tolist()))
    assert f"note: probe few asks for 5000 documents; {used} were used (the data set holds" in (
        capsys.readouterr().err
    )


def test_the_newcomers_friction_is_gone(finished, tmp_path, capsys):
    """Finding 10: export's hint runs outside the venv, the probe table fits a terminal at 13
    milestones with a baseline column, `labkit induction` speaks in words."""
    from labkit.cli import main, phase_change_line, probe_table

    milestone = ckpt.list_milestones(finished)[-1]
    assert main(["export", "--checkpoint", str(milestone), "--out", str(tmp_path / "hf")]) == 0
    hint = capsys.readouterr().out.splitlines()[-1].split(" -c ")[0].strip()
    assert hint != "python" and Path(hint).resolve() == Path(sys.executable).resolve()
    rows = [{"milestone": f"tokens_{2**k * 1024:012d}", "layer": layer, "accuracy": 0.81,
             "ci_low": 0.79, "ci_high": 0.83, "baseline": 0.62, "control_accuracy": 0.7,
             "selectivity": 0.11} for k in range(13) for layer in range(4)]  # fmt: skip
    table = probe_table(rows)
    assert "baseline" in table[0] and len(table) == 1 + 13 * 4
    assert max(map(len, table)) <= 100 and "0.620" in table[1]
    change = {"first_above_threshold": None, "crossed_in": None, "crossed_inside": False,
              "steepest_rise": (1024, 2048), "rise": 0.02, "threshold": 0.3}  # fmt: skip
    assert phase_change_line(change).startswith("phase change: not reached")
    change |= {"first_above_threshold": 4096, "crossed_in": (2048, 4096), "crossed_inside": True}
    assert "crossed 0.3 between 2.05K and 4.10K tokens (inside training)" in phase_change_line(
        change
    )
