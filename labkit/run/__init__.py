"""labkit.run: the run directory, owned in one place.

    layout      every file name of a run directory (`CONFIG`, `CHECKPOINTS`, `META`, ...)
    checkpoint  writing and verifying checkpoint directories (atomic, SHA256SUMS), resume states
    milestone   `Milestone`: one checkpoint, parsed once, verified and loaded on request
    lifecycle   `RunWriter` (the trainer's locked handle: pinned config, history, repairs) and
                `resolve_config` (what a start or `--resume` may change)
    catalogue   `Run` (a run directory as a record), `find_runs`, the choice of runs/milestones
    launch      `trainer_command` and the signals a running trainer answers

The names below are the package's public face; `from labkit.run import load, find_runs` is how
notebooks and commands reach a run.
"""

from labkit.errors import CheckpointError
from labkit.run.catalogue import (
    Run,
    best_milestone,
    find_runs,
    is_run,
    main_runs,
    open_run,
    pick_milestones,
    pick_run,
    seed_groups,
    select_milestones,
    shared_milestones,
)
from labkit.run.checkpoint import (
    latest_resume_state,
    load_resume_state,
    save_checkpoint,
    save_resume_state,
    verify,
)
from labkit.run.launch import StopSignals, trainer_command
from labkit.run.layout import milestone_name, resume_name
from labkit.run.lifecycle import SAFE_TO_CHANGE, RunWriter, resolve_config
from labkit.run.milestone import Milestone, list_milestones, load

__all__ = [
    "SAFE_TO_CHANGE",
    "CheckpointError",
    "Milestone",
    "Run",
    "RunWriter",
    "StopSignals",
    "best_milestone",
    "find_runs",
    "is_run",
    "latest_resume_state",
    "list_milestones",
    "load",
    "load_resume_state",
    "main_runs",
    "milestone_name",
    "open_run",
    "pick_milestones",
    "pick_run",
    "resolve_config",
    "resume_name",
    "save_checkpoint",
    "save_resume_state",
    "seed_groups",
    "select_milestones",
    "shared_milestones",
    "trainer_command",
    "verify",
]
