"""Milestone and resume checkpoints: directories of safetensors + JSON, written atomically, with a
SHA-256 of every file in `meta.json` so a corrupted checkpoint is an error, not a silent surprise.

    checkpoints/<milestone>/model.safetensors, config.json, meta.json, tokenizer.json
    resume/step_<N>/        the same, plus optimizer.pt and trainer.json (scheduler, data position,
                            every rank's RNG states, eval history)

Every file of the directory, meta.json included, is listed with its SHA-256 in `SHA256SUMS`
(`sha256sum -c SHA256SUMS` checks it by hand); `verify` refuses a checkpoint without it unless
`trust_unverified` (or LABKIT_TRUST_UNVERIFIED=1, `--trust-unverified` on the command line).

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
from labkit.errors import LabkitError
from labkit.fileio import fsync_dir, fsync_write, sha256_file
from labkit.model import LabModel
from labkit.runs import BEST, CHECKPOINTS, META, RESUME, Milestone


class CheckpointError(LabkitError, RuntimeError):
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
        fsync_write(tmp / META, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        write_sums(tmp)
        if path.exists():  # re-saving (e.g. "best"): swap, then drop the old one
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            path.rename(old)
            tmp.rename(path)
            fsync_dir(path.parent)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
            fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


SUMS = "SHA256SUMS"


def write_sums(directory: Path) -> None:
    """SHA256SUMS over every file in `directory` (whatever files a writer put there), in
    `sha256sum` format, fsynced."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != SUMS)
    text = "".join(f"{sha256_file(p)}  {p.name}\n" for p in files)
    fsync_write(directory / SUMS, text.encode())


def _trust_unverified(flag: bool | None) -> bool:
    return flag if flag is not None else os.environ.get("LABKIT_TRUST_UNVERIFIED") == "1"


def verify(path: str | Path, trust_unverified: bool | None = None) -> dict[str, Any]:
    """Check every file of a checkpoint directory, meta.json included, against SHA256SUMS; a file
    missing, changed or not listed is a `CheckpointError`, and so is a missing SHA256SUMS unless
    `trust_unverified`. Returns the meta."""
    path = Path(path)
    meta_path = path / META
    if not meta_path.exists():
        raise CheckpointError(f"{path} is not a checkpoint (no meta.json)")
    sums_path = path / SUMS
    if sums_path.exists():
        listed = {}
        for line in sums_path.read_text().splitlines():
            digest, _, name = line.partition("  ")
            if not name or len(digest) != 64:
                raise CheckpointError(f"{sums_path} is corrupted (line {line[:80]!r})")
            listed[name] = digest
        for name, expected in listed.items():
            f = path / name
            if not f.is_file():
                raise CheckpointError(f"{path}: {name} is missing")
            if sha256_file(f) != expected:
                raise CheckpointError(
                    f"{path}: {name} is corrupted (SHA-256 mismatch); use another milestone or "
                    "resume state"
                )
        extra = sorted(p.name for p in path.iterdir() if p.name != SUMS and p.name not in listed)
        if extra:
            raise CheckpointError(f"{path}: {extra} not covered by {SUMS} (added afterwards?)")
    elif not _trust_unverified(trust_unverified):
        raise CheckpointError(
            f"{path} has no {SUMS} (written by an older labkit, or tampered with): its files "
            "cannot be verified; pass --trust-unverified (LABKIT_TRUST_UNVERIFIED=1) to load it"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_path} is corrupted: {err}") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path} is not a checkpoint meta")
    return meta


TOKENIZER_FILE = "tokenizer.json"  # a milestone carries its tokenizer (checksummed with the rest)


def tokenizer_path(path: str | Path) -> Path | None:
    """The tokenizer.json of a checkpoint: its own, else (run directories written before
    checkpoints carried one) the one of the data set its meta.json names; None if neither."""
    path = Path(path)
    if (path / TOKENIZER_FILE).exists():
        return path / TOKENIZER_FILE
    data_dir = Milestone.read(path).data_path
    if data_dir:
        candidate = data_dir / TOKENIZER_FILE
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
    root = Path(run_dir) / CHECKPOINTS
    if not root.exists():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and not p.name.startswith(".") and p.name != BEST and (p / META).exists():
            out.append(Milestone.read(p))
    return [m.path for m in sorted(out, key=lambda m: m.tokens)]


def latest_resume_state(run_dir: str | Path) -> Path | None:
    """The newest complete resume state that passes its checksums; a corrupted newest one falls
    back to the one before (and says so)."""
    root = Path(run_dir) / RESUME
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
