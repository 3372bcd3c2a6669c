"""The ``celery`` command line options of logkit: ``--log-format``, ``--log-field``,
``--log-events``, ``--log-schema``, ``--log-task-buffer``, ``--log-dedupe-window``.

* :func:`add_preload_options` (run by :func:`logkit.install`) adds ``--log-format``,
  ``--log-field key=value`` and ``--log-events/--no-log-events`` to every ``celery``
  sub-command of the app (``worker``, ``beat``, ``worker -B`` ...). Click validates
  them; the ``user_preload_options`` signal (:func:`on_user_preload_options`,
  connected by :func:`logkit.install`) hands them to the installation *before* the
  worker configures logging, where they win over every other source.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from .config import FORMATS, SCHEMAS, ConfigError, LogConfig, check_options
from .receivers import installation

__all__ = ["add_preload_options", "on_user_preload_options", "preload_values"]

#: The ``celery --help`` section the options are listed under.
HELP_GROUP = "Logging Options (logkit)"

#: Click parameter name -> LogConfig option name.
_OPTION_NAMES = {"log_format": "format", "log_field": "fields", "log_events": "events",
                 "log_schema": "schema", "log_task_buffer": "task_buffer",
                 "log_dedupe_window": "dedupe_window"}


# ---------------------------------------------------------------------------
# celery preload options
# ---------------------------------------------------------------------------


def _check_fields(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Click callback: ``key=value`` pairs, validated by :class:`LogConfig`'s parser."""
    if not value:
        return None
    for item in value:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE; got {item!r}", ctx=ctx, param=param)
    try:
        return dict(check_options({"fields": list(value)})["fields"])
    except ConfigError as exc:
        raise click.BadParameter(str(exc).replace("logkit: ", ""), ctx=ctx, param=param) from None


def _preload_options() -> list[click.Option]:
    from celery.bin.base import CeleryOption

    return [
        CeleryOption(
            ["--log-format"],
            type=click.Choice(FORMATS, case_sensitive=False),
            default=None,
            help_group=HELP_GROUP,
            help="logkit output format (default: auto = console on a terminal, json otherwise).",
        ),
        CeleryOption(
            ["--log-field"],
            multiple=True,
            metavar="KEY=VALUE",
            callback=_check_fields,
            help_group=HELP_GROUP,
            help="Static field added to every log record (repeatable).",
        ),
        CeleryOption(
            ["--log-schema"],
            type=click.Choice(SCHEMAS, case_sensitive=False),
            default=None,
            help_group=HELP_GROUP,
            help="Field names of JSON output: logkit (default), ecs, gcp, datadog, otel.",
        ),
        CeleryOption(
            ["--log-task-buffer"],
            type=click.IntRange(min=0),
            default=None,
            metavar="N",
            help_group=HELP_GROUP,
            help="Keep a task's last N records below the level; write them if it fails "
            "(0 = off, the default).",
        ),
        CeleryOption(
            ["--log-dedupe-window"],
            type=click.FloatRange(min=0.0, max=1e9),
            default=None,
            metavar="SECONDS",
            help_group=HELP_GROUP,
            help="Fold repeats of a line within SECONDS into one line with a count "
            "(0 = off, the default).",
        ),
        CeleryOption(
            ["--log-events/--no-log-events"],
            default=None,
            help_group=HELP_GROUP,
            help="Emit structured task/worker lifecycle events (default: on).",
        ),
    ]


def preload_values(options: Mapping[str, Any], base: LogConfig | None = None) -> dict[str, Any]:
    """LogConfig values for the preload ``options`` that were given on the command line.

    ``--log-field`` values are added to ``base.fields`` (the fields from the other
    sources), not put in their place.
    """
    values: dict[str, Any] = {}
    for param, name in _OPTION_NAMES.items():
        value = options.get(param)
        if value is None or (name == "fields" and not value):
            continue
        if name == "fields":
            value = {**(base.fields if base is not None else {}), **dict(value)}
        values[name] = value
    return check_options(values)


def on_user_preload_options(app: Any = None, options: Any = None, **_: Any) -> None:
    """``user_preload_options``: store the command-line values in the installation."""
    inst = installation()
    if inst is None or not isinstance(options, Mapping):
        return
    if app is not None and app is not inst.app:
        return
    if not any(options.get(param) not in (None, (), {}) for param in _OPTION_NAMES):
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
