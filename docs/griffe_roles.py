"""A Griffe extension for the API reference: Sphinx markup in docstrings made Markdown.

logkit's docstrings name other objects the Sphinx way (``:func:`install```,
``:class:`ConfigError```) and introduce an indented example with ``::``; mkdocstrings
renders Markdown, where those would show up literally. This turns each role into inline
code (``install()``, ``ConfigError``) and ``e.g.::`` into ``e.g.:`` (a ``::`` alone on its
line goes) once the package is loaded. Loaded by ``mkdocs.yml`` (``extensions:``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(func|meth|class|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    role, short, target = match.groups()
    text = re.sub(r"\s*<[^>]*>$", "", target)  # `Text <target>`: the text
    if short:  # `~a.b.C`: only the last name, as Sphinx shows it
        text = text.rsplit(".", 1)[-1]
    if role in ("func", "meth") and not text.endswith(")"):
        text += "()"
    return f"`{text}`"


_LITERAL_ALONE = re.compile(r"^[ \t]*::[ \t]*\n(?:[ \t]*\n)?", re.M)
_LITERAL_END = re.compile(r"(\S)::[ \t]*$", re.M)


def sphinx_roles_to_code(text: str) -> str:
    """``text`` with every Sphinx role (``:func:`x```) turned into inline code (`` `x()` ``)
    and every literal-block ``::`` made a colon."""
    text = _LITERAL_ALONE.sub("", text)
    text = _LITERAL_END.sub(r"\1:", text)
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
