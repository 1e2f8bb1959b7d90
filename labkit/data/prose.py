"""Real English prose that ships with Python: the standard library's docstrings and the language
reference topics of `pydoc_data.topics`. A natural-text source that needs no network.

The module list is fixed and objects are taken in sorted order, so on one interpreter the source
is deterministic; docstrings change between Python versions, so the manifest records the version
(`prose_source`). The build runs these documents through the user-text curation (seed 003's
quality heuristics, exact and near dedup) like any user source, and holds out `eval_prose`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from typing import Any

# Modules with substantial English docstrings; importing them has no side effects.
PROSE_MODULES = (
    "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs", "collections",
    "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email.message", "enum", "filecmp", "fractions", "ftplib", "functools",
    "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser", "http.client",
    "http.cookies", "imaplib", "inspect", "io", "ipaddress", "json", "locale", "logging",
    "mailbox", "mimetypes", "numbers", "operator", "optparse", "os", "pathlib", "pickle",
    "pkgutil", "platform", "poplib", "pprint", "queue", "random", "re", "sched", "secrets",
    "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver", "sqlite3",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "trace", "traceback", "typing", "unittest", "urllib.parse",
    "urllib.request", "uuid", "warnings", "weakref", "wave", "xml.dom.minidom", "zipfile",
)  # fmt: skip
MIN_WORDS = 30  # shorter docstrings are signatures and one-liners, not prose


def _docstrings(module_name: str) -> list[tuple[str, str]]:
    """(qualified name, docstring) for a module, its public classes, functions and methods."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:  # an interpreter built without e.g. sqlite3: skip it, the manifest says so
        return []
    out = [(module_name, inspect.getdoc(module) or "")]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            out.append((f"{module_name}.{name}", inspect.getdoc(obj) or ""))
        if inspect.isclass(obj):
            for meth_name, meth in sorted(vars(obj).items()):
                if not meth_name.startswith("_") and inspect.isfunction(meth):
                    out.append((f"{module_name}.{name}.{meth_name}", inspect.getdoc(meth) or ""))
    return out


def generate_prose(limit: int = 0) -> list[dict[str, Any]]:
    """The prose documents in a fixed (hash-of-id) order, so that `limit` (0 = all) keeps a
    spread of topics and modules."""
    from pydoc_data.topics import topics

    docs = []
    for name in sorted(topics):
        docs.append({"text": topics[name].strip(), "id": f"prose-topic-{name}", "origin": name})
    for module_name in PROSE_MODULES:
        for qualname, doc in _docstrings(module_name):
            if len(doc.split()) >= MIN_WORDS:
                docs.append(
                    {"text": doc.strip(), "id": f"prose-doc-{qualname}", "origin": qualname}
                )
    for d in docs:
        d["source"] = "prose"
    # Salted: the train/eval split hashes the bare id, and must stay independent of this order.
    docs.sort(key=lambda d: hashlib.sha256(f"prose-order:{d['id']}".encode()).hexdigest())
    return docs[:limit] if limit else docs


def prose_lineage() -> dict[str, Any]:
    """What the manifest records about the source: the interpreter and the modules used."""
    available = [m for m in PROSE_MODULES if importlib.util.find_spec(m.split(".")[0])]
    return {"python": sys.version.split()[0], "modules": available, "pydoc_topics": True}


def write_jsonl(path: str, limit: int = 0) -> int:
    """The prose as a user brings text: one JSON object per line with `id`, `text` and two label
    fields (`kind`: topic or docstring; `module`: the stdlib module, or `topics`). Returns the
    number of documents written. Used by the README's "Your own data" walk-through."""
    import json
    from pathlib import Path

    rows = []
    for d in generate_prose(limit):
        topic = d["id"].startswith("prose-topic-")
        module = "topics" if topic else d["origin"].split(".")[0]
        rows.append({"id": d["id"], "text": d["text"], "kind": "topic" if topic else "docstring",
                     "module": module})  # fmt: skip
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)
