"""MkDocs hook: ``<!-- logkit.__all__ -->`` in a page becomes one API entry per public name.

Every name in ``logkit.__all__`` gets a ``::: logkit.NAME`` block (mkdocstrings), so a
name added to the public API is documented without editing the page. ``install`` is
named by its full path (``logkit.install.install``): its module has the same name, and
Griffe documents the module instead of the function under ``logkit.install``.
"""

from __future__ import annotations

from typing import Any

PLACEHOLDER = "<!-- logkit.__all__ -->"
#: Shown first, in this order (the calls a user starts with); the rest as in ``__all__``.
FIRST = ("install", "configure", "uninstall", "LogConfig", "ConfigError", "Installation")
#: Names whose module has the same name: where the object really is.
SHADOWED = {"install": "logkit.install.install"}


def api_blocks(names: list[str]) -> str:
    """The mkdocstrings blocks for ``names`` (``logkit.__all__``), in reading order."""
    order = [n for n in FIRST if n in names] + [n for n in names if n not in FIRST]
    order.sort(key=lambda n: n == "__version__")  # the version last
    blocks = []
    for name in order:
        path = SHADOWED.get(name, f"logkit.{name}")
        heading = f'\n    options:\n      heading: "logkit.{name}"' if name in SHADOWED else ""
        blocks.append(f"::: {path}{heading}\n")
    return "\n".join(blocks)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if PLACEHOLDER not in markdown:
        return markdown
    import logkit

    return markdown.replace(PLACEHOLDER, api_blocks(list(logkit.__all__)))
