"""The run directory's layout: every file name of a run, spelled here only.

    runs/<id>/.lock           held (fcntl.flock) by the trainer for its whole life; the kernel
                              releases it when the process dies, however it dies
    runs/<id>/config.json     the run's config, pinned when the run is created
    runs/<id>/history.jsonl   one line per start: fresh, resumed, which keys changed, by whom
    runs/<id>/metrics.jsonl   one JSON object per log step (and per evaluation); repaired on resume
    runs/<id>/tensorboard/    TensorBoard events
    runs/<id>/checkpoints/<milestone>/   model.safetensors, config.json, meta.json,
                              tokenizer.json, SHA256SUMS: one milestone, loadable by itself
    runs/<id>/checkpoints/best/          the milestone kept by the GOLD guards
    runs/<id>/resume/step_<N>/           a milestone's files plus optimizer.pt and trainer.json
    runs/<id>/evals/          `labkit eval` results, one JSON per milestone
    runs/<id>/cache/<milestone>/         activations the analyses computed, by weights and inputs
    runs/<id>/sae/<milestone>/<site>.<layer>/   a sparse autoencoder in sparsify's format
                              (cfg.json, sae.safetensors) and labkit.json (config, hashes, measures)
    runs/<id>/final.json      the marker of a finished run (also appended to runs/index.jsonl)

A milestone is named by the tokens seen when it was written (`tokens_000002048000`), so the
milestones of runs with one token schedule line up by name.
"""

from __future__ import annotations

LOCK = ".lock"
CONFIG = "config.json"
HISTORY = "history.jsonl"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
RESUME = "resume"
FINAL = "final.json"
INDEX = "index.jsonl"  # in the runs root: one record per finished run (and evaluation)
EVALS = "evals"
BEST = "best"
CACHE = "cache"  # analysis results kept beside each milestone (labkit.run.cache)
SAES = "sae"  # sparse autoencoders trained on a milestone (labkit.study.sae_over_milestones)

# inside a checkpoint directory
META = "meta.json"
MODEL = "model.safetensors"
MODEL_CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
SUMS = "SHA256SUMS"
OPTIMIZER = "optimizer.pt"  # resume states only
TRAINER_STATE = "trainer.json"  # resume states only


def milestone_name(tokens: int) -> str:
    return f"tokens_{tokens:012d}"


def resume_name(step: int) -> str:
    return f"step_{step:08d}"


__all__ = [
    "BEST",
    "CACHE",
    "CHECKPOINTS",
    "CONFIG",
    "EVALS",
    "FINAL",
    "HISTORY",
    "INDEX",
    "LOCK",
    "META",
    "METRICS",
    "MODEL",
    "MODEL_CONFIG",
    "OPTIMIZER",
    "RESUME",
    "SAES",
    "SUMS",
    "TENSORBOARD",
    "TOKENIZER",
    "TRAINER_STATE",
    "milestone_name",
    "resume_name",
]
