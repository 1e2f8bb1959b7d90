"""mkdocs hook: pages whose content labkit generates, so the site cannot drift from the code.

`<!-- generated: config-reference -->` in a page becomes `labkit.config.config_reference()`, the
table of every config field as declared in labkit/config.py.
"""

from __future__ import annotations

GENERATED = {
    "<!-- generated: config-reference -->": lambda: __import__(
        "labkit.config", fromlist=["config_reference"]
    ).config_reference(),
}


def on_page_markdown(markdown: str, **_) -> str:
    for marker, render in GENERATED.items():
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown
