"""A Griffe extension for the API reference: Sphinx roles in docstrings become code.

logkit's docstrings name other objects the Sphinx way (``:func:`install```,
``:class:`ConfigError```); mkdocstrings renders Markdown, where those would show up
literally. This turns each role into inline code (``install()``, ``ConfigError``)
once the package is loaded. Loaded by ``mkdocs.yml`` (``extensions:``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(func|meth|class|mod|attr|data|exc|obj|const):`~?([^`]+)`")


def _code(match: re.Match[str]) -> str:
    role, target = match.groups()
    # `Text <target>` keeps the text; a leading ~ (already dropped) or a long path keeps it
    text = re.sub(r"\s*<[^>]*>$", "", target)
    if role in ("func", "meth") and not text.endswith(")"):
        text += "()"
    return f"`{text}`"


def sphinx_roles_to_code(text: str) -> str:
    """``text`` with every Sphinx role (``:func:`x```) turned into inline code (`` `x()` ``)."""
    return _ROLE.sub(_code, text)


class SphinxRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every docstring in a loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = sphinx_roles_to_code(obj.docstring.value)
            stack.extend(m for m in obj.members.values() if not m.is_alias)
