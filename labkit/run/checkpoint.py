"""Writing and verifying checkpoint directories: safetensors + JSON, written atomically, every
file listed with its SHA-256 in `SHA256SUMS`, so a corrupted checkpoint is an error, not a silent
surprise (`sha256sum -c SHA256SUMS` checks one by hand).

    checkpoints/<milestone>/model.safetensors, config.json, meta.json, tokenizer.json, SHA256SUMS
    resume/step_<N>/        the same, plus optimizer.pt and trainer.json (scheduler, data
                            position, every rank's RNG states, eval history)

`verify` refuses a directory without SHA256SUMS unless `trust_unverified` (or
LABKIT_TRUST_UNVERIFIED=1, `--trust-unverified` on the command line). Optimizer state is the only
file that is not safetensors or JSON; it is read with `torch.load(weights_only=True)`. Reading a
milestone's meta.json and weights is `labkit.run.milestone`'s job.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from labkit.config import ModelConfig
from labkit.errors import CheckpointError
from labkit.fileio import fsync_dir, fsync_write, load_safetensors, sha256_file
from labkit.run.layout import META, MODEL, MODEL_CONFIG, OPTIMIZER, RESUME, SUMS, TRAINER_STATE


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
        fsync_write(tmp / MODEL, save(tensors, metadata={"format": "pt"}))
        fsync_write(tmp / MODEL_CONFIG, (json.dumps(cfg.to_dict(), indent=2) + "\n").encode())
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


def write_sums(directory: Path) -> None:
    """SHA256SUMS over every file in `directory` (whatever files a writer put there), in
    `sha256sum` format, fsynced."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != SUMS)
    text = "".join(f"{sha256_file(p)}  {p.name}\n" for p in files)
    fsync_write(directory / SUMS, text.encode())


def _trust_unverified(flag: bool | None) -> bool:
    return flag if flag is not None else os.environ.get("LABKIT_TRUST_UNVERIFIED") == "1"


def verify(path: str | Path, trust_unverified: bool | None = None) -> None:
    """Check every file of a checkpoint directory, meta.json included, against SHA256SUMS; a file
    missing, changed or not listed is a `CheckpointError`, and so is a missing SHA256SUMS unless
    `trust_unverified`."""
    path = Path(path)
    if not (path / META).exists():
        raise CheckpointError(f"{path} is not a checkpoint (no {META})")
    sums_path = path / SUMS
    if not sums_path.exists():
        if _trust_unverified(trust_unverified):
            return
        raise CheckpointError(
            f"{path} has no {SUMS} (written by an older labkit, or tampered with): its files "
            "cannot be verified; pass --trust-unverified (LABKIT_TRUST_UNVERIFIED=1) to load it"
        )
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
        OPTIMIZER: buf.getvalue(),
        TRAINER_STATE: (json.dumps(trainer_state, sort_keys=True) + "\n").encode(),
    }
    return save_checkpoint(path, state, cfg, meta, extra)


def load_resume_state(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(model tensors, optimizer state, trainer state) of a verified resume state."""
    path = Path(path)
    verify(path)
    tensors = load_safetensors(path / MODEL, "use another resume state")
    optimizer = load_optimizer_state(path / OPTIMIZER)
    trainer = json.loads((path / TRAINER_STATE).read_text())
    return tensors, optimizer, trainer


def load_optimizer_state(path: Path) -> dict[str, Any]:
    """optimizer.pt, read with `torch.load(weights_only=True)`: tensors and plain containers
    only. Anything else (a pickle that could run code, or a damaged file) is a
    `CheckpointError`; torch's own message, which suggests turning that protection off, is not
    passed on."""
    import pickle
    import warnings
    import zipfile

    try:
        with warnings.catch_warnings():  # e.g. a pickle protocol note: the error says enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as err:
        kind = (
            "holds objects other than tensors (a pickle that could run code), and was not "
            "written by labkit"
            if isinstance(err, pickle.UnpicklingError)
            else "is damaged"
        )
        raise CheckpointError(
            f"{path} {kind}: refused; resume from another resume state, or start a new run dir"
        ) from None


def latest_resume_state(run_dir: str | Path) -> Path | None:
    """The newest resume state of a run that passes its checksums; a corrupted newest one falls
    back to the one before (and says so); None when the run has none yet."""
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
    if states:
        raise CheckpointError(
            f"every resume state in {root} ({len(states)}) fails its checksums: nothing to "
            "resume from; start a new run dir, or restore a state"
        )
    return None


__all__ = [
    "latest_resume_state",
    "load_resume_state",
    "model_tensors",
    "save_checkpoint",
    "save_resume_state",
    "verify",
    "write_sums",
]
