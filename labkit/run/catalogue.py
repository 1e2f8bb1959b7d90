"""The catalogue of runs: a run directory read as a `Run` (its config, milestones and logged
metrics), the runs of a study found under a directory, and the choice of runs and milestones
that analyses and commands make (`main_runs`, `seed_groups`, `select_milestones`, ...)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labkit.config import ModelConfig
from labkit.errors import RunDirError
from labkit.run.layout import CHECKPOINTS, CONFIG, FINAL, METRICS
from labkit.run.milestone import Milestone, list_milestones


@dataclass
class Run:
    """A training run directory: its config, its milestones and its logged metrics."""

    path: Path
    model: ModelConfig
    train: dict[str, Any]
    milestones: list[Milestone] = field(repr=False)
    # model fields every run found with this one sets alike (e.g. a study's n_layers): the
    # study's design, not a variant of it (`find_runs` fills it in)
    shared: frozenset = field(default=frozenset(), repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def attention(self) -> str:
        return self.model.attention

    @property
    def mix(self) -> str:
        return self.train["data"]["mix"]

    @property
    def label(self) -> str:
        return f"{self.attention.upper()} / {self.mix}"

    @property
    def seed(self) -> int:
        return int(self.train.get("seed", 0))

    @property
    def variant(self) -> dict[str, Any]:
        """Architecture fields set on top of the preset (e.g. {"kv_lora_rank": 8}): {} for the
        preset itself. Settings that do not change the architecture (init_std) are not one, nor
        are fields every run found with this one sets alike (`shared`)."""
        return {k: v for k, v in self.model_overrides().items()
                if (k, _hashable(v)) not in self.shared}  # fmt: skip

    def model_overrides(self) -> dict[str, Any]:
        """The architecture fields this run's config sets on top of its preset."""
        return {k: v for k, v in sorted(self.train.get("model", {}).items())
                if k not in ("preset", "init_std", "attn_impl", "name")}  # fmt: skip

    @property
    def cell(self) -> tuple:
        """Runs of one cell differ only in their seed: attention, corpus and model variant."""
        return (self.attention, self.mix, tuple(self.variant.items()))

    @property
    def init(self) -> Milestone | None:
        """The step-0 milestone (`checkpoint.save_init`), if the run has one."""
        return next((m for m in self.milestones if m.is_init), None)

    @property
    def trained(self) -> list[Milestone]:
        """The milestones after at least one optimizer step."""
        return [m for m in self.milestones if not m.is_init]

    @property
    def context(self) -> int:
        """The text length analyses read (`Milestone.context` of the last milestone): the
        longest sequence the run trained on, else the model's `max_seq_len`; positions past it
        are ones the model never saw."""
        return self.milestones[-1].context

    @property
    def data_path(self) -> Path:
        """The data set the run trained on (as its last milestone records it)."""
        return self.milestones[-1].data_path

    def trained_splits(self) -> list[str]:
        """The held-out splits whose source this run trained on (a dense run never saw the
        control corpus): the in-distribution splits its losses are reported on."""
        from labkit.data.build import load_manifest, trained_splits

        return trained_splits(load_manifest(self.data_path), self.mix, self.milestones[-1].tokens)

    @property
    def finished(self) -> bool:
        return (self.path / FINAL).exists()

    def metrics(self) -> tuple[list[dict], list[dict]]:
        """(training rows, evaluation rows) of metrics.jsonl; eval rows carry `val/<split>`."""
        rows = [json.loads(line) for line in (self.path / METRICS).read_text().splitlines()]
        evals = [r for r in rows if any(k.startswith("val/") for k in r)]
        return [r for r in rows if "loss" in r], evals


def open_run(path: str | Path) -> Run:
    """A run directory written by pretrain/run.py (config.json and checkpoints/)."""
    path = Path(path)
    config = path / CONFIG
    if not config.exists():
        raise FileNotFoundError(f"{path} is not a labkit run (no {CONFIG}); train one with "
                                "`python pretrain/run.py` or `make paper`")  # fmt: skip
    try:
        saved = json.loads(config.read_text())
        model, train = ModelConfig.from_dict(saved["model"]), saved["train"]
    except (ValueError, KeyError, TypeError) as err:
        raise RunDirError(f"{config} is not a run config ({err})") from None
    milestones = list_milestones(path)
    if not milestones:
        raise FileNotFoundError(f"{path} has no milestones in {path / CHECKPOINTS}")
    return Run(path, model, train, milestones)


def is_run(path: Path) -> bool:
    return (path / CONFIG).exists() and (path / CHECKPOINTS).is_dir()


def find_runs(paths: str | Path | Iterable[str | Path]) -> list[Run]:
    """Runs named directly, or every run one level inside a directory (e.g. runs/paper-mini)."""
    paths = [paths] if isinstance(paths, (str, Path)) else paths
    runs = []
    for p in map(Path, paths):
        if is_run(p):
            runs.append(open_run(p))
            continue
        inside = sorted(d for d in p.glob("*") if is_run(d))
        if not inside:
            raise FileNotFoundError(
                f"no runs in {p}: give run directories or a directory of runs (`make paper` "
                "writes runs/paper-mini); a notebook looks at other runs with `make lab "
                "RUNS=runs/mine` or `runs = [...]` in its parameters cell"
            )
        runs.extend(open_run(d) for d in inside)
    mark_shared_settings(runs)
    return runs


def mark_shared_settings(runs: Sequence[Run]) -> None:
    """Set each run's `shared`: the model fields all of `runs` set alike (none for one run)."""
    if len(runs) < 2:
        return
    shared = frozenset.intersection(
        *(frozenset((k, _hashable(v)) for k, v in r.model_overrides().items()) for r in runs)
    )
    for r in runs:
        r.shared = shared


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def pick_run(runs: Sequence[Run], attention: str, mix: str | None = None) -> Run | None:
    """The main run with this attention kind (and mix, when given): the preset itself (no model
    variant) and, among seeds, the first run in name order; else any matching run."""
    matching = [r for r in runs if r.attention == attention and (mix is None or r.mix == mix)]
    if not matching:
        return None
    return min(matching, key=lambda r: (bool(r.variant), r.name))


def main_runs(runs: Sequence[Run]) -> list[Run]:
    """One run per (attention, corpus): `pick_run`'s choice, in the order given."""
    chosen = {id(pick_run(runs, r.attention, r.mix)) for r in runs}
    return [r for r in runs if id(r) in chosen]


def seed_groups(runs: Sequence[Run]) -> dict[tuple, list[Run]]:
    """Cells (`Run.cell`) trained with two or more seeds, each with its runs in name order."""
    cells: dict[tuple, list[Run]] = {}
    for r in sorted(runs, key=lambda r: r.name):
        cells.setdefault(r.cell, []).append(r)
    return {c: rs for c, rs in cells.items() if len({r.seed for r in rs}) >= 2}


def pick_milestones(milestones: Sequence[Milestone], n: int | None) -> list[Milestone]:
    """At most `n` milestones, always with the first and the last: the step-0 one (if any) and
    `n - 1` trained ones spread evenly in log(tokens) between the first trained one and the last.
    (Step 0 is at 0 tokens, which a log scale cannot place; spacing it as if it were at 1 token
    would spend most picks on the empty stretch before the first trained milestone.)"""
    milestones = list(milestones)
    if n is None or len(milestones) <= n:
        return milestones
    if n < 2:
        return milestones[-1:]
    init = [m for m in milestones[:1] if m.tokens == 0]
    trained = milestones[len(init) :]
    want = n - len(init)
    tokens = np.log([m.tokens for m in trained])
    chosen: set[int] = {0, len(trained) - 1} if want >= 2 else {len(trained) - 1}
    # the others: for each evenly spaced log target, the nearest milestone not yet picked
    for target in np.linspace(tokens[0], tokens[-1], max(want, 2))[1:-1]:
        free = [i for i in range(len(trained)) if i not in chosen]
        chosen.add(min(free, key=lambda i: abs(tokens[i] - target)))
    return init + [trained[i] for i in sorted(chosen)]


def select_milestones(
    run_dir: str | Path, milestones: str | Sequence[str] | None = "all"
) -> list[Milestone]:
    """A run's milestones: all, or those named (directory names, token counts, `first`, `last`,
    `best` = lowest mean validation loss) in a comma list or sequence."""
    found = list_milestones(run_dir)
    if not found:
        raise FileNotFoundError(f"no milestones in {run_dir}/{CHECKPOINTS}: is it a labkit run?")
    if milestones in (None, "all"):
        return found
    wanted = [
        m.strip() for m in (milestones.split(",") if isinstance(milestones, str) else milestones)
    ]
    aliases = {"first": found[0].name, "last": found[-1].name}
    if "best" in wanted:
        aliases["best"] = best_milestone(found).name
    wanted = list(dict.fromkeys(aliases.get(m, m) for m in wanted))
    by_name = {m.name: m for m in found} | {m.name.split("_")[-1].lstrip("0"): m for m in found}
    missing = [m for m in wanted if m not in by_name and m.lstrip("0") not in by_name]
    if missing:
        raise ValueError(f"unknown milestones {missing}; available: {[m.name for m in found]}")
    return [by_name.get(m) or by_name[m.lstrip("0")] for m in wanted]


def best_milestone(milestones: Sequence[Milestone]) -> Milestone:
    """The milestone with the lowest mean validation loss over its eval splits."""
    scored = [m for m in milestones if m.val]
    if not scored:
        raise ValueError("no milestone records validation losses: 'best' needs eval splits")
    return min(scored, key=lambda m: m.val_mean)


def shared_milestones(a: Run, b: Run) -> list[tuple[Milestone, Milestone]]:
    """Milestones the two runs both have (same token count), in order."""
    other = {m.name: m for m in b.milestones}
    return [(m, other[m.name]) for m in a.milestones if m.name in other]


__all__ = [
    "Run",
    "best_milestone",
    "find_runs",
    "is_run",
    "main_runs",
    "open_run",
    "pick_milestones",
    "pick_run",
    "seed_groups",
    "select_milestones",
    "shared_milestones",
]
