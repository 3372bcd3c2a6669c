"""The ``celery`` command line options of logkit: ``--log-format``, ``--log-field``,
``--log-events``, ``--log-schema``, ``--log-task-buffer``, ``--log-dedupe-window``,
``--log-task-sample``.

* :func:`add_preload_options` (run by :func:`logkit.install`) adds ``--log-format``,
  ``--log-field key=value`` and ``--log-events/--no-log-events`` to every ``celery``
  sub-command of the app (``worker``, ``beat``, ``worker -B`` ...). Click validates
  them; the ``user_preload_options`` signal (:func:`on_user_preload_options`,
  connected by :func:`logkit.install`) hands them to the installation *before* the
  worker configures logging, where they win over every other source.
* :func:`fill_preload_gaps` (run by :func:`logkit.install` while the ``celery`` command
  runs, on Celery 5.3 to 5.6) lets every ``celery`` sub-command take those options:
  Celery hands an app's preload options to each sub-command's function, and on those
  releases most of them (``result``, ``call``, ``graph``, ``list``, ``control`` ...)
  take none and fail with a ``TypeError``. Celery 5.7 takes them off itself.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any

import click
from celery import signals

from ._changes import Changes
from .config import FORMATS, SCHEMAS, ConfigError, LogConfig, check_options
from .receivers import installation

__all__ = [
    "add_preload_options",
    "fill_preload_gaps",
    "on_user_preload_options",
    "preload_values",
]

#: The ``celery --help`` section the options are listed under.
HELP_GROUP = "Logging Options (logkit)"

#: Click parameter name -> LogConfig option name.
_OPTION_NAMES = {"log_format": "format", "log_field": "fields", "log_events": "events",
                 "log_schema": "schema", "log_task_buffer": "task_buffer",
                 "log_dedupe_window": "dedupe_window", "log_task_sample": "task_sample"}


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
            ["--log-task-sample"],
            type=click.FloatRange(min=0.0, max=1.0),
            default=None,
            metavar="RATE",
            help_group=HELP_GROUP,
            help="Write the lines below WARNING of this share of workflows (by root id), "
            "and of every task that goes wrong (0 to 1; 1 = all, the default).",
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


# ---------------------------------------------------------------------------
# Celery 5.3 to 5.6: sub-commands that refuse the preload options
# ---------------------------------------------------------------------------


def _accepts(function: Callable[..., Any], name: str) -> bool:
    """Whether ``function`` takes a keyword argument ``name`` (as Celery 5.7 decides)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.kind is not inspect.Parameter.POSITIONAL_ONLY and p.name == name)
        for p in parameters
    )


class _PreloadConsumer:
    """A ``celery`` sub-command's callback that takes off the preload options its
    function refuses, after ``user_preload_options`` was sent with them (once).

    ``through``: the callback is Celery's ``pass_context(handle_preload_options(f))``,
    whose middle part would send the signal and hand the options to ``f``: ``f`` is
    called here directly, with the context, after the same signal (sender ``f``).
    Otherwise the callback is called without the refused options, after the signal
    (sender: the callback), as Celery 5.7's ``consume_preload_options`` does.
    """

    def __init__(self, callback: Callable[..., Any], inner: Callable[..., Any],
                 through: bool) -> None:
        functools.update_wrapper(self, callback)  # its name and doc; __wrapped__
        self.callback, self.inner, self.through = callback, inner, through

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        app = ctx.obj.app
        options: dict[str, Any] = {}
        for option in app.user_options.get("preload", ()):
            name = option.name
            if name in kwargs:
                options[name] = kwargs[name]
                if not _accepts(self.inner, name):
                    del kwargs[name]
        if options:
            sender = self.inner if self.through else self.callback
            signals.user_preload_options.send(sender=sender, app=app, options=options)
        if self.through:
            return self.inner(ctx, *args, **kwargs)
        return self.callback(*args, **kwargs)


def _noop() -> None:  # pragma: no cover - never called: its wrapper's code is compared
    pass


def fill_preload_gaps(app: Any, changes: Changes) -> list[str]:
    """Let every ``celery`` sub-command of Celery 5.3 to 5.6 take ``app``'s preload options.

    Celery adds an app's preload options (logkit's ``--log-*``) to every ``celery``
    sub-command and hands their values to the sub-command's function; on Celery 5.3 to
    5.6 most of those functions take none, so ``celery -A proj result ID`` (``call``,
    ``graph``, ``list``, ``upgrade``, ``logtool``, ``amqp``, ``control``; on 5.3.0 also
    ``purge``, ``shell``, ``multi``, ``report``) fails with a ``TypeError``. Celery 5.7
    wraps each callback in ``consume_preload_options``; this does the same on the older
    releases, for the callbacks whose function refuses an option, and records each
    replacement in ``changes`` (:func:`logkit.uninstall` puts Celery's callback back).

    Does nothing unless the ``celery`` command is running (``celery.bin.celery``
    imported: the app module is loaded before the sub-command's arguments are parsed),
    nor on a Celery that has ``consume_preload_options``. ``user_preload_options`` is
    sent once per command, as before: where Celery's ``handle_preload_options`` would
    send it, the signal is sent here instead of there.

    Returns:
        The names of the sub-commands whose callback was replaced.
    """
    group = getattr(sys.modules.get("celery.bin.celery"), "celery", None)
    commands = getattr(group, "commands", None)
    if not isinstance(commands, Mapping):
        return []
    from celery.bin import base

    if hasattr(base, "consume_preload_options"):  # Celery 5.7+
        return []
    names = [option.name for option in app.user_options.get("preload", ())]
    sending = base.handle_preload_options(_noop).__code__  # its wrapper's code
    filled: list[str] = []
    for name, command in commands.items():
        callback = command.callback
        if callback is None or isinstance(callback, _PreloadConsumer):
            continue
        chain = [callback]
        while (wrapped := getattr(chain[-1], "__wrapped__", None)) is not None:
            chain.append(wrapped)
        inner = chain[-1]
        if all(_accepts(inner, option) for option in names):
            continue
        through = len(chain) == 3 and getattr(chain[1], "__code__", None) is sending
        if not through and any(getattr(f, "__code__", None) is sending for f in chain):
            continue  # handle_preload_options inside another shape: leave it
        if changes.add(f"celery {name}: preload options taken off its arguments",
                       functools.partial(setattr, command, "callback", callback),
                       key=("celery preload options", name)):
            command.callback = _PreloadConsumer(callback, inner, through)
            filled.append(name)
    return filled
