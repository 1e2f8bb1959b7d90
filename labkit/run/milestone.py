"""A milestone: one checkpoint directory of a run, parsed once.

`Milestone.read(path)` is the only reader of a checkpoint's meta.json; every other part of labkit
(the study layer, evaluation, the commands, the notebooks) passes `Milestone`s around, which
carry what meta.json says (tokens, step, losses, the data set) and load their model on request:

    from labkit.run import list_milestones
    milestones = list_milestones("runs/paper-mini/mla-dense")   # in order of tokens seen
    model = milestones[-1].load()                                # verified, tokenizer attached

A `Milestone` is also a path (`os.fspath(m)`, `Path(m)`), so it goes wherever a path goes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit.errors import CheckpointError, RunDirError
from labkit.run.checkpoint import verify
from labkit.run.layout import BEST, CHECKPOINTS, META, MODEL, MODEL_CONFIG, TOKENIZER
from labkit.run.layout import CONFIG as RUN_CONFIG

if TYPE_CHECKING:
    import torch

    from labkit.config import ModelConfig
    from labkit.model import LabModel


@dataclass(frozen=True, eq=False)
class Milestone:
    """A checkpoint's meta.json, parsed once: what every reader of milestones needs. Equal (and
    hashed) by its path."""

    path: Path
    tokens: int
    step: int | None = None
    kind: str = "milestone"
    train_loss: float | None = None
    val: dict[str, float] = field(default_factory=dict)
    data_dir: str | None = None
    run_name: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, path: str | Path) -> Milestone:
        """The record of checkpoint directory `path` (no checksum check: `verify` and `load` do
        that before any weight is used)."""
        if isinstance(path, Milestone):
            return path
        path = Path(path)
        try:
            meta = json.loads((path / META).read_text())
            if not isinstance(meta, dict):
                raise TypeError("not a JSON object")
            return cls(
                path=path,
                tokens=int(meta["tokens"]),  # orders a run's milestones
                step=int(meta["step"]) if meta.get("step") is not None else None,
                kind=meta.get("kind", "milestone"),
                train_loss=meta.get("train_loss"),
                val=dict(meta.get("val") or {}),
                data_dir=meta.get("data_dir"),
                run_name=meta.get("run"),
                meta=meta,
            )
        except FileNotFoundError:
            if not path.exists():
                raise FileNotFoundError(f"checkpoint {path} not found") from None
            raise RunDirError(f"{path} is not a checkpoint (no {META})") from None
        except (ValueError, KeyError, TypeError) as err:
            raise RunDirError(f"{path / META} is not a checkpoint meta ({err})") from None

    # ------------------------------------------------------------------ identity
    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        """A file of the checkpoint directory: `milestone / META`."""
        return self.path / name

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Milestone):
            return other.path == self.path
        if isinstance(other, os.PathLike):  # a milestone is its directory
            return Path(other) == self.path
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_init(self) -> bool:
        """The step-0 milestone (`checkpoint.save_init`): the untrained weights, a baseline of
        the analyses rather than a point of training."""
        return bool(self.meta.get("init")) or self.step == 0

    # ------------------------------------------------------------------ what meta.json says
    @property
    def model_sha256(self) -> str | None:
        """The SHA-256 of the weights, as recorded (and verified on load) in meta.json."""
        return (self.meta.get("checksums") or {}).get(MODEL)

    @property
    def data_path(self) -> Path | None:
        """The data set the checkpoint was trained on (the trainer records it absolute)."""
        return Path(self.data_dir) if self.data_dir else None

    @property
    def run_dir(self) -> Path | None:
        """The run directory holding this milestone (`runs/<id>` of `runs/<id>/checkpoints/<name>`),
        None for a checkpoint copied outside a run."""
        return self.path.parent.parent if self.path.parent.name == CHECKPOINTS else None

    @property
    def trained_context(self) -> int | None:
        """The longest sequence the run trained on (`train.seq_len`, or the largest of its
        `seq_len_schedule`), from the run's pinned config; None for a milestone outside a run.
        A model's `max_seq_len` may be longer: positions past this one it has never seen."""
        if self.run_dir is None:
            return None
        try:
            cfg = json.loads((self.run_dir / RUN_CONFIG).read_text())["train"]["train"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        lengths = [cfg.get("seq_len")] + [s for _, s in cfg.get("seq_len_schedule") or []]
        lengths = [int(x) for x in lengths if x]
        return max(lengths) if lengths else None

    @property
    def context(self) -> int:
        """The longest text analyses feed this milestone's model: the context its run trained on
        (`trained_context`), else the model's `max_seq_len`."""
        return self.trained_context or self.model_config.max_seq_len

    @property
    def val_mean(self) -> float:
        """Mean validation loss over the eval splits; inf when it was not evaluated."""
        return sum(self.val.values()) / len(self.val) if self.val else math.inf

    @property
    def tokenizer_path(self) -> Path | None:
        """The milestone's own tokenizer.json, else (run directories written before milestones
        carried one) the one of the data set it trained on; None if neither exists."""
        if (self.path / TOKENIZER).exists():
            return self.path / TOKENIZER  # covered by SHA256SUMS, checked when loaded
        if self.data_path and (self.data_path / TOKENIZER).exists():
            from labkit.data.build import tokenizer_bytes

            tokenizer_bytes(self.data_path)  # checked against the data set's manifest
            return self.data_path / TOKENIZER
        return None

    @property
    def model_config(self) -> ModelConfig:
        """The model's shape, from the checkpoint's config.json."""
        from labkit.config import ModelConfig

        return ModelConfig.from_dict(json.loads((self.path / MODEL_CONFIG).read_text()))

    # ------------------------------------------------------------------ weights
    def verify(self) -> None:
        """Every file against SHA256SUMS (`labkit.run.checkpoint.verify`)."""
        verify(self.path)

    def load(self, device: str | torch.device = "cpu") -> LabModel:
        """The model in eval mode, its files verified first and its tokenizer attached
        (`model.to_tokens` / `to_string` work)."""
        from labkit.fileio import load_safetensors
        from labkit.model import LabModel

        self.verify()
        cfg = self.model_config
        model = LabModel(cfg)
        state = load_safetensors(self.path / MODEL)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [m for m in missing if not (cfg.tie_embeddings and m == "unembed.weight")]
        if missing or unexpected:
            raise CheckpointError(
                f"{self.path}: weights do not fit {MODEL_CONFIG}: missing {missing}, extra "
                f"{unexpected}"
            )
        tokenizer = self.tokenizer_path
        if tokenizer is not None:
            model.set_tokenizer(tokenizer)
        else:
            print(
                f"note: no {TOKENIZER} in {self.path} nor in the data set its {META} names "
                f"({self.data_dir}); the model loads without one: model.set_tokenizer(PATH)"
            )
        return model.to(device).eval()


def load(
    path: str | Path | Milestone, device: str | torch.device = "cpu"
) -> tuple[LabModel, Milestone]:
    """A milestone (or resume state) directory as (LabModel in eval mode, its Milestone)."""
    milestone = Milestone.read(path)
    return milestone.load(device), milestone


def list_milestones(run_dir: str | Path) -> list[Milestone]:
    """The milestones of a run, in order of tokens seen (`best` excluded)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.exists():
        return []
    found = [
        Milestone.read(p)
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name != BEST and (p / META).exists()
    ]
    return sorted(found, key=lambda m: m.tokens)


__all__ = ["Milestone", "list_milestones", "load"]
