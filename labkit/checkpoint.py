"""Milestone and resume checkpoints: directories of safetensors + JSON, written atomically, with a
SHA-256 of every file in `meta.json` so a corrupted checkpoint is an error, not a silent surprise.

    checkpoints/<milestone>/model.safetensors, config.json, meta.json, tokenizer.json
    resume/step_<N>/        the same, plus optimizer.pt and trainer.json (scheduler, data position,
                            every rank's RNG states, eval history)

`load(path)` returns (LabModel, meta). Optimizer state is the only non-safetensors file; it is read
with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from labkit.config import ModelConfig
from labkit.fileio import fsync_write, sha256_file
from labkit.model import LabModel


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupted."""


def model_tensors(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A state dict safetensors can store: CPU, contiguous, the tied unembedding dropped."""
    out = {}
    for k, v in state.items():
        if cfg.tie_embeddings and k == "unembed.weight":
            continue
        out[k] = v.detach().to("cpu").contiguous()
    return out


def save_checkpoint(
    path: str | Path,
    state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    meta: dict[str, Any],
    extra: dict[str, bytes] | None = None,
) -> Path:
    """Write a checkpoint directory atomically: into a temporary sibling, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        tensors = model_tensors(state, cfg)
        fsync_write(tmp / "model.safetensors", save(tensors, metadata={"format": "pt"}))
        fsync_write(tmp / "config.json", (json.dumps(cfg.to_dict(), indent=2) + "\n").encode())
        for name, data in (extra or {}).items():
            fsync_write(tmp / name, data)
        checksums = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        meta = dict(meta, checksums=checksums)
        fsync_write(tmp / "meta.json", (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        if path.exists():  # re-saving (e.g. "best"): swap, then drop the old one
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def verify(path: str | Path) -> dict[str, Any]:
    """Check that every file listed in meta.json is present and unchanged; return the meta."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.exists():
        raise CheckpointError(f"{path} is not a checkpoint (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_path} is corrupted: {err}") from err
    for name, expected in meta.get("checksums", {}).items():
        f = path / name
        if not f.exists():
            raise CheckpointError(f"{path}: {name} is missing")
        if sha256_file(f) != expected:
            raise CheckpointError(
                f"{path}: {name} is corrupted (SHA-256 mismatch); use another milestone or "
                "resume state"
            )
    return meta


TOKENIZER_FILE = "tokenizer.json"  # a milestone carries its tokenizer (checksummed with the rest)


def tokenizer_path(path: str | Path) -> Path | None:
    """The tokenizer.json of a checkpoint: its own, else (run directories written before
    checkpoints carried one) the one of the data set its meta.json names; None if neither."""
    path = Path(path)
    if (path / TOKENIZER_FILE).exists():
        return path / TOKENIZER_FILE
    data_dir = json.loads((path / "meta.json").read_text()).get("data_dir")
    if data_dir:
        from labkit.study import run_data_dir

        candidate = run_data_dir(path) / TOKENIZER_FILE
        if candidate.exists():
            return candidate
    return None


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[LabModel, dict[str, Any]]:
    """A milestone (or resume state) as (LabModel in eval mode, meta). Checksums are verified.
    The model's tokenizer is attached (`model.to_tokens`/`to_string` work) from the checkpoint's
    tokenizer.json, or from its data set's for older checkpoints."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    meta = verify(path)
    cfg = ModelConfig.from_dict(json.loads((path / "config.json").read_text()))
    model = LabModel(cfg)
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (cfg.tie_embeddings and m == "unembed.weight")]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit config.json: missing {missing}, extra {unexpected}"
        )
    tok = tokenizer_path(path)
    if tok is not None:
        model.set_tokenizer(tok)
    else:
        print(
            f"note: no {TOKENIZER_FILE} in {path} nor in the data set its meta.json names "
            f"({meta.get('data_dir')}); the model loads without one: model.set_tokenizer(PATH)"
        )
    return model.to(device).eval(), meta


def save_resume_state(
    path: str | Path,
    state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    optimizer_state: dict[str, Any],
    trainer_state: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    buf = io.BytesIO()
    torch.save(optimizer_state, buf)
    extra = {
        "optimizer.pt": buf.getvalue(),
        "trainer.json": (json.dumps(trainer_state, sort_keys=True) + "\n").encode(),
    }
    return save_checkpoint(path, state, cfg, meta, extra)


def load_resume_state(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(model tensors, optimizer state, trainer state) of a verified resume state."""
    path = Path(path)
    verify(path)
    tensors = load_file(str(path / "model.safetensors"))
    optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    trainer = json.loads((path / "trainer.json").read_text())
    return tensors, optimizer, trainer


def list_milestones(run_dir: str | Path) -> list[Path]:
    """Milestone directories of a run, in order of tokens seen (`best` excluded)."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    out = []
    for p in root.iterdir():
        if (
            p.is_dir()
            and not p.name.startswith(".")
            and p.name != "best"
            and (p / "meta.json").exists()
        ):
            out.append(p)
    return sorted(out, key=lambda p: json.loads((p / "meta.json").read_text())["tokens"])


def latest_resume_state(run_dir: str | Path) -> Path | None:
    """The newest complete resume state that passes its checksums; a corrupted newest one falls
    back to the one before (and says so)."""
    root = Path(run_dir) / "resume"
    if not root.exists():
        return None
    states = sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")), reverse=True
    )
    for p in states:
        try:
            verify(p)
            return p
        except CheckpointError as err:
            print(f"warning: skipping resume state {p.name}: {err}")
    return None


__all__ = [
    "CheckpointError",
    "latest_resume_state",
    "list_milestones",
    "load",
    "load_resume_state",
    "save_checkpoint",
    "save_resume_state",
    "tokenizer_path",
    "verify",
]
