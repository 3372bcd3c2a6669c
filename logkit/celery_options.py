"""The ``celery`` command line options of logkit: one per option that has a ``flag`` in
the option table (:data:`logkit.config.OPTIONS`): ``--log-format``, ``--log-field``,
``--log-events``, ``--log-schema``, ``--log-task-buffer``, ``--log-dedupe-window``,
``--log-task-sample``, ``--log-celery-lines``.

* :func:`add_preload_options` (run by :func:`logkit.install`) adds them to every
  ``celery`` sub-command of the app (``worker``, ``beat``, ``worker -B`` ...). Click
  validates them with each option's own parser; the ``user_preload_options`` signal
  (:func:`on_user_preload_options`, connected by :func:`logkit.install`) hands them to
  the installation *before* the worker configures logging, where they win over every
  other source.
* On Celery 5.3 to 5.6 most sub-commands refuse those options:
  :func:`logkit._compat.fill_preload_gaps` (run by :func:`logkit.install`) takes them
  off there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from .config import OPTIONS, ConfigError, LogConfig, Option, check_options
from .receivers import installation

__all__ = [
    "add_preload_options",
    "on_user_preload_options",
    "preload_values",
]

#: The ``celery --help`` section the options are listed under.
HELP_GROUP = "Logging Options (logkit)"


# ---------------------------------------------------------------------------
# celery preload options
# ---------------------------------------------------------------------------


def _param(row: Option) -> str:
    """The click parameter name of ``row``'s flag (``--log-format`` -> ``log_format``)."""
    assert row.flag is not None
    return row.flag.split("/")[0].lstrip("-").replace("-", "_")


#: The options that have a flag, by click parameter name.
_FLAGGED: dict[str, Option] = {_param(row): row for row in OPTIONS.values() if row.flag}


def _parse(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Click callback: the option's own parser (a bad value is a usage error)."""
    if value is None or value == ():
        return None
    row = _FLAGGED[param.name or ""]
    if row.repeat:
        for item in value:
            key, sep, _ = item.partition("=")
            if not sep or not key.strip():
                raise click.BadParameter(f"expected KEY=VALUE; got {item!r}", ctx=ctx,
                                         param=param)
        value = list(value)
    try:
        parsed = row.parse(value)
    except ValueError as exc:  # "Invalid value for '--log-x': must be ...; got ..."
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    # other receivers of user_preload_options get a plain dict, as click would give
    return dict(parsed) if isinstance(parsed, Mapping) else parsed


def _preload_option(row: Option) -> click.Option:
    from celery.bin.base import CeleryOption

    assert row.flag is not None
    settings: dict[str, Any] = {"default": None, "help_group": HELP_GROUP, "help": row.doc}
    if "/" not in row.flag:  # a switch takes no value
        settings["callback"] = _parse
        if row.choices is not None:  # listed in --help; click names them in its error
            settings["type"] = click.Choice(row.choices, case_sensitive=False)
        if row.metavar is not None:
            settings["metavar"] = row.metavar
        if row.repeat:
            settings["multiple"] = True
    option: click.Option = CeleryOption([row.flag], **settings)
    return option


def _preload_options() -> list[click.Option]:
    """logkit's ``celery`` command-line options, one per option with a flag."""
    return [_preload_option(row) for row in _FLAGGED.values()]


def preload_values(options: Mapping[str, Any], base: LogConfig | None = None) -> dict[str, Any]:
    """LogConfig values for the preload ``options`` that were given on the command line.

    ``--log-field`` values are added to ``base.fields`` (the fields from the other
    sources), not put in their place.
    """
    values: dict[str, Any] = {}
    for param, row in _FLAGGED.items():
        value = options.get(param)
        if value is None or (row.repeat and not value):
            continue
        if row.repeat:  # added to the other sources' pairs
            value = {**(getattr(base, row.name) if base is not None else {}), **dict(value)}
        values[row.name] = value
    return check_options(values)


def on_user_preload_options(app: Any = None, options: Any = None, **_: Any) -> None:
    """``user_preload_options``: store the command-line values in the installation."""
    inst = installation()
    if inst is None or not isinstance(options, Mapping):
        return
    if app is not None and app is not inst.app:
        return
    if not any(options.get(param) not in (None, (), {}) for param in _FLAGGED):
        return
    try:
        base: LogConfig | None = LogConfig.resolve(inst.app, inst.options)
    except ConfigError:
        base = None  # reported when the worker resolves its config
    inst.cli.update(preload_values(options, base))
    # Resolve again, now with the command-line values (logging is not configured yet).
    inst._config = None
    inst._task_context = None


def add_preload_options(app: Any) -> bool:
    """Add logkit's options to ``app``'s ``celery`` command line (idempotent).

    Returns ``False`` if ``app`` has no command line (no ``user_options``): then
    :func:`on_user_preload_options` has nothing to receive.
    """
    user_options = getattr(app, "user_options", None)
    if user_options is None:
        return False
    preload = user_options["preload"]
    known = {getattr(option, "name", None) for option in preload}
    for option in _preload_options():
        if option.name not in known:
            preload.add(option)
    return True
