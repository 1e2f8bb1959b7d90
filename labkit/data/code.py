"""Real code: the Python standard library source of the running interpreter."""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from pathlib import Path
from typing import Any

SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}


def stdlib_files(root: Path | None = None) -> list[Path]:
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS.intersection(path.relative_to(root).parts):
            continue
        files.append(path)
    return files


def generate_code(
    max_files: int, max_chars: int, seed: int, root: Path | None = None
) -> list[dict[str, Any]]:
    """Up to `max_files` stdlib modules (a seeded, hash-ordered choice: stable across runs of the
    same interpreter), each cut to `max_chars` at a line boundary."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = stdlib_files(root)
    if not files:
        raise FileNotFoundError(f"no Python standard library sources under {root}")
    ranked = sorted(
        files, key=lambda p: hashlib.sha256(f"{seed}:{p.relative_to(root)}".encode()).hexdigest()
    )
    docs = []
    for path in ranked[:max_files]:
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text) > max_chars:
            text = text[: text.rfind("\n", 0, max_chars) + 1] or text[:max_chars]
        rel = path.relative_to(root).as_posix()
        docs.append({"text": text, "source": "code", "path": rel, "id": f"code-{rel}"})
    return docs


def interpreter() -> str:
    return f"CPython {sys.version.split()[0]}"
