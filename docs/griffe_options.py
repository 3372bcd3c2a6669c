"""A Griffe extension for the API reference: each option's ``doc`` is its attribute's doc.

Every option of ``logkit.LogConfig`` is declared once, as a field made by
``logkit.config.option(default, ..., doc="...")`` (the option table). The ``doc`` text
is what ``celery --help`` shows for the option's flag; this makes it the attribute's
docstring too, as a ``#:`` comment would be, so the API reference lists each option with
its description. Loaded by ``mkdocs.yml`` (``extensions:``) and by tests/test_docs.py.
"""

from __future__ import annotations

import ast
from typing import Any

import griffe


class OptionDocs(griffe.Extension):
    """Give each ``option(..., doc="...")`` attribute that ``doc`` as its docstring."""

    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs: Any) -> None:
        value = attr.value
        if attr.docstring is not None or not isinstance(value, griffe.ExprCall):
            return
        if str(value.function) != "option":
            return
        for argument in value.arguments:
            if isinstance(argument, griffe.ExprKeyword) and argument.name == "doc":
                text = ast.literal_eval(str(argument.value))
                attr.docstring = griffe.Docstring(text, parent=attr)
