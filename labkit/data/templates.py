"""The sentence templates and their renderer. Templates are data (`templates.toml`); the
generators only choose which template to render and fill its slots.

Syntax, all of it:
    [a|b|c]      one alternative, chosen with the document's RNG (alternatives nest)
    {slot}       a value from the slots given to `render` (a marked mention, a number, a phrase)
    {@name}      another entry of the table, rendered in place
An entry of the table is a list of alternative templates; `render` picks one. Rendering checks
that every slot is filled, so a template can never leak an unrendered `{slot}` into text.
"""

from __future__ import annotations

import random

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from functools import cache
from pathlib import Path
from typing import Any

TABLE_FILE = Path(__file__).with_name("templates.toml")


@cache
def table() -> dict[str, list[str]]:
    """Every named template: `section.name` -> alternatives."""
    raw = tomllib.loads(TABLE_FILE.read_text(encoding="utf-8"))
    out: dict[str, list[str]] = {}

    def walk(prefix: str, node: Any) -> None:
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict):
                walk(name, value)
            else:
                out[name] = [value] if isinstance(value, str) else list(value)

    walk("", raw)
    return out


def _close(text: str, i: int, open_c: str, close_c: str) -> int:
    depth = 0
    for j in range(i, len(text)):
        depth += (text[j] == open_c) - (text[j] == close_c)
        if depth == 0:
            return j
    raise ValueError(f"unbalanced {open_c!r} in template {text!r}")


def _split_top(body: str) -> list[str]:
    parts, depth, last = [], 0, 0
    for j, ch in enumerate(body):
        depth += (ch in "[{") - (ch in "]}")
        if ch == "|" and depth == 0:
            parts.append(body[last:j])
            last = j + 1
    return [*parts, body[last:]]


def expand(template: str, slots: dict[str, Any], rng: random.Random) -> str:
    """One rendering of a template string."""
    out, i = [], 0
    while i < len(template):
        ch = template[i]
        if ch == "[":
            j = _close(template, i, "[", "]")
            out.append(expand(rng.choice(_split_top(template[i + 1 : j])), slots, rng))
            i = j + 1
        elif ch == "{":
            j = template.index("}", i)
            key = template[i + 1 : j]
            if key.startswith("@"):
                out.append(render(key[1:], slots, rng))
            elif key in slots:
                out.append(str(slots[key]))
            else:
                raise KeyError(f"template slot {{{key}}} not given (template {template!r})")
            i = j + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def render(name: str, slots: dict[str, Any], rng: random.Random) -> str:
    """Render the table entry `name`: one of its alternatives, expanded."""
    options = table().get(name)
    if not options:
        raise KeyError(f"no template named {name!r} in {TABLE_FILE.name}")
    return expand(rng.choice(options), slots, rng)
