"""Would the miniature study reach its induction and CKA controls with ten times the training?
The study's budget control.

    python pretrain/long_control.py [--runs-dir runs/paper-mini-long] [--figures figures]

Trains the CPU study's `gqa-dense` cell (pretrain/configs/paper-mini/cpu.toml: tiny-gqa, its init,
optimizer, schedule shape and token batch of 2,048) with two seeds for 10,000 optimizer steps
instead of 1,000, a milestone every 250 steps. Ten times the tokens would read paper-mini's corpus
ten times over, so the runs read the GPU scale's corpus (data/paper-mini-gpu, built on first use:
about 11 minutes on one core): the same sources and three stages, scaled to the run as in the
study, and no source read more than 0.67 times. The two runs train side by side, one core each
(about an hour on the 2-core CPU machine); finished runs are skipped and unfinished ones resume.

Then, with notebook 02's and 04's procedures: per run the induction summary over every milestone
(head_detector semantics on repeated random tokens, threshold 0.3; the copy-loss drop; the ICL
score), at every milestone the two seeds share Kornblith et al.'s layer identification by linear
CKA at resid_post, and notebook 03's probes against their baselines at the first seed's study
budget and last milestone. Writes `long_control` to figures/results.json (kept by `make figures`),
with the identification at the study's own budget (2,048,000 tokens) beside the last milestone's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "pretrain"))

from paper import ensure_data, train_all, train_command  # noqa: E402

from labkit.figures import check_results_dir, save_results  # noqa: E402
from labkit.run.layout import FINAL, HISTORY  # noqa: E402

STEPS, STUDY_STEPS = 10_000, 1_000
SCALE = {  # a scale in paper.py's sense: the CPU study's config with these overrides
    "config": "pretrain/configs/paper-mini/cpu.toml",
    "preset": "tiny-{attention}",
    "set": [
        "data.dir=data/paper-mini-gpu",
        "data.config=pretrain/configs/data/paper-mini-gpu.toml",
        "checkpoint.every_tokens=512000",
        "checkpoint.resume_every_steps=1000",
        "eval.every_steps=1000",
        "log.every_steps=50",
    ],
}
RUNS = {
    "gqa-dense": {"attention": "gqa", "mix": "dense"},
    "gqa-dense-seed2": {"attention": "gqa", "mix": "dense", "seed": 2024},
}
# notebook 02's induction test (random half, batch) and ICL positions; notebook 04's CKA text;
# notebook 03's probe targets (None: all), documents per target (None: the spec's) and null draws
INDUCTION_SEQ, INDUCTION_BATCH, ICL_EARLY, ICL_LATE = 64, 16, 16, 200
CKA_DOCUMENTS, CKA_MAX_LEN = 64, 128
PROBE_TARGETS, PROBE_DOCUMENTS, PROBE_NULLS = None, None, 3
PROBE_KEYS = ("accuracy", "ci", "null", "init_baseline", "bow_baseline", "beats")


def long_scale() -> tuple[dict, int]:
    """SCALE with the run length set (STEPS optimizer steps of the config's token batch), and the
    tokens of the study's own budget (STUDY_STEPS of them)."""
    from labkit.config import TrainConfig

    batch = TrainConfig.load(REPO / SCALE["config"], SCALE["set"]).train.batch_tokens
    return SCALE | {"set": [*SCALE["set"], f"train.tokens={STEPS * batch}"]}, STUDY_STEPS * batch


def train_minutes(run_dir: Path) -> float:
    """Wall minutes from the run's first start to its finish, from its history.jsonl (whatever
    else the machine was doing meanwhile)."""
    events = [json.loads(line) for line in (run_dir / HISTORY).read_text().splitlines()]
    start = datetime.fromisoformat(next(e["time"] for e in events if e["event"] == "start"))
    finish = datetime.fromisoformat([e["time"] for e in events if e["event"] == "finish"][-1])
    return round((finish - start).total_seconds() / 60, 1)


def analyse(runs_dir: Path, study_tokens: int) -> dict:
    """Notebook 02's induction summary per run and notebook 04's seed-vs-seed layer
    identification at every shared milestone."""
    from labkit.analysis.similarity import layer_identification
    from labkit.run import open_run, shared_milestones
    from labkit.study import (
        compare_runs,
        eval_sequences,
        icl_over_milestones,
        induction_over_milestones,
        induction_summary,
    )

    a, b = (open_run(runs_dir / name) for name in RUNS)
    out: dict = {"steps": STEPS, "study_steps": STUDY_STEPS, "induction": {}}
    out["train_minutes"] = {run.name: train_minutes(run.path) for run in (a, b)}
    for run in (a, b):
        induction = induction_over_milestones(
            run.milestones, INDUCTION_SEQ, INDUCTION_BATCH, 0.3, progress=True
        )
        icl = icl_over_milestones(run.milestones, "general", 32, ICL_EARLY, ICL_LATE, True)
        curve = [[r["tokens"], r["max_induction"]] for r in induction["milestones"]]
        out["induction"][run.name] = induction_summary(induction, icl) | {"curve": curve}
    sequences = eval_sequences(a.data_path, "general", CKA_DOCUMENTS, CKA_MAX_LEN)
    rows = compare_runs(shared_milestones(a, b), sequences, "resid_post", progress=True)
    found = {r["tokens"]: layer_identification(r["cka"]) for r in rows}
    last = rows[-1]["tokens"]
    # one milestone's argmax can flip on a margin of 0.01: also the mean over the second half
    second_half = [f["fraction"] for tokens, f in found.items() if tokens > last / 2]
    out["cka_layer_identification"] = {
        "runs": [a.name, b.name],
        "at_study_budget": found[study_tokens]["fraction"],
        "final": found[last]["fraction"],
        "mean_second_half": float(np.mean(second_half)),
        "final_argmax": found[last]["argmax"],
        "curve": [[tokens, f["fraction"]] for tokens, f in found.items()],
    }
    out["probes"] = probes(a, study_tokens)
    return out


def probes(run, study_tokens: int) -> dict:
    """Notebook 03's probes with their baselines (null, step 0, bag of tokens, digit count) at
    the study's budget and at the last milestone of `run`: which targets beat every baseline."""
    from labkit.analysis.probe_tasks import load_probe_spec, probe_targets
    from labkit.analysis.probing import probe_set
    from labkit.study import probe_against_baselines

    data, max_len = run.data_path, run.model.max_seq_len
    sets = {
        t: probe_set(load_probe_spec(t, max_documents=PROBE_DOCUMENTS), data, max_len)
        for t in PROBE_TARGETS or probe_targets()
    }
    by_tokens = {m.tokens: m for m in run.milestones}
    out = {}
    for tokens in (study_tokens, max(by_tokens)):
        found = probe_against_baselines(by_tokens[tokens], run.init, sets, n_null=PROBE_NULLS)
        out[str(tokens)] = {
            "beats_all_baselines": [t for t, r in found.items() if r["beats_all_baselines"]],
            "targets": {t: {k: r[k] for k in PROBE_KEYS} for t, r in found.items()},
        }
    return {
        "run": run.name,
        "at_study_budget": out[str(study_tokens)],
        "final": out[str(max(by_tokens))],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs-dir", default=str(REPO / "runs" / "paper-mini-long"))
    p.add_argument("--figures", default=str(REPO / "figures"), help="where results.json lives")
    args = p.parse_args(argv)
    try:
        check_results_dir(args.figures)  # named before an hour of training, not after it
    except ValueError as e:
        p.error(f"--figures {e}")
    began = time.time()
    runs_dir = Path(args.runs_dir)
    scale, study_tokens = long_scale()
    jobs = [
        (name, train_command(scale, name, run, runs_dir / name), runs_dir / name)
        for name, run in RUNS.items()
        if not (runs_dir / name / FINAL).exists()
    ]
    if jobs:
        ensure_data(scale)
        rc, _ = train_all(jobs, parallel=2)
        if rc:
            return rc
    result = analyse(runs_dir, study_tokens)
    result["minutes"] = round((time.time() - began) / 60, 1)  # this call: training if any, analysis
    save_results(args.figures, "long_control", result)
    for name, s in result["induction"].items():
        print(f"{name}: best induction head {s['max_score']:.3f} (crossing: "
              f"{s['crossing_tokens']}), copy-loss drop {s['copy_loss_drop']:.2f}")  # fmt: skip
    for when in ("at_study_budget", "final"):
        beat = result["probes"][when]["beats_all_baselines"]
        print(f"probe targets beating every baseline ({when}): {', '.join(beat) or 'none'}")
    cka = result["cka_layer_identification"]
    print(f"CKA layer identification: {cka['at_study_budget']:.0%} at the study's budget, "
          f"{cka['final']:.0%} after {STEPS:,} steps")  # fmt: skip
    print(f"wrote long_control to {Path(args.figures) / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
