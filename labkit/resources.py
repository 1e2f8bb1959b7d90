"""What labkit ships beside its code, found through `importlib.resources`, so an installed wheel
works outside a checkout: the probe specs (probes/), the configs (pretrain/configs/) and the
trainer (pretrain/run.py).

In a checkout, `labkit/shipped/` holds links to those directories (one copy of each file, edited
where users expect it); a wheel carries copies (pyproject.toml's package-data). Paths as the README
writes them (`pretrain/configs/ci.toml`, `probes/digit.yaml`) resolve to the file under the current
directory when it exists, else to the shipped one.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SHIPPED = "shipped"
# How users spell shipped files (relative to a checkout) -> where the package keeps them.
USER_PREFIXES = {"pretrain/configs/": "configs/", "probes/": "probes/", "pretrain/run.py": "run.py"}


def shipped(*parts: str) -> Path:
    """A file or directory under labkit/shipped/ (the package must be installed as files, which
    pip does for wheels)."""
    return Path(str(files("labkit").joinpath(SHIPPED, *parts))).resolve()


def probes_dir() -> Path:
    """The shipped probe specs (probes/*.yaml)."""
    return shipped("probes")


def configs_dir() -> Path:
    """The shipped configs (pretrain/configs/)."""
    return shipped("configs")


def trainer_script() -> Path:
    """The trainer (pretrain/run.py): the checkout's own file, or the wheel's copy."""
    return shipped("run.py")


def find(path: str | Path) -> Path:
    """`path` if it exists; else, for a path written as in a checkout (pretrain/configs/...,
    probes/..., pretrain/run.py), the shipped copy; else `path` unchanged (the caller reports
    it missing)."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    text = path.as_posix().removeprefix("./")
    for prefix, inside in USER_PREFIXES.items():
        if text.startswith(prefix):
            candidate = shipped(*(inside + text[len(prefix) :]).split("/"))
            if candidate.exists():
                return candidate
    return path


def checkout() -> Path | None:
    """The source checkout labkit is imported from (an editable install), or None for a wheel:
    the directory above the package holding pyproject.toml and pretrain/. Only checkout tools
    (notebooks, benchmarks' RESULTS.md, the GPU check) need it."""
    root = Path(str(files("labkit"))).resolve().parent
    if (root / "pyproject.toml").is_file() and (root / "pretrain").is_dir():
        return root
    return None


def require_checkout(what: str) -> Path:
    """The checkout, or a one-line error saying `what` needs one."""
    root = checkout()
    if root is None:
        raise FileNotFoundError(
            f"{what} needs a source checkout of labkit (git clone ...; pip install -e .): an "
            "installed wheel carries no notebooks/ or benchmarks/"
        )
    return root


__all__ = [
    "checkout",
    "configs_dir",
    "find",
    "probes_dir",
    "require_checkout",
    "shipped",
    "trainer_script",
]
