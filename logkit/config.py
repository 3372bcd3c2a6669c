"""`LogConfig`: logkit's options as one frozen, validated object.

Options can come from four places. Highest precedence first:

1. ``celery`` command-line preload options (``--log-format`` ...), when given;
2. ``LOGKIT_<NAME>`` environment variables (e.g. ``LOGKIT_FORMAT=json``);
3. keyword arguments to :func:`logkit.install` / :func:`logkit.configure`;
4. ``app.conf.logkit_<name>`` settings of the Celery app;

and then the defaults below. Every value is validated once, when the config is
resolved; an invalid value raises :class:`ConfigError` naming the option, where
it came from, the value and the valid choices.

Each option is declared once, as a field of :class:`LogConfig` made by :func:`option`:
its name, type, default, parser, doc and ``celery`` flag; its environment variable and
``app.conf`` keys follow from its name. :data:`OPTIONS` is that table: validation, the
sources above, :mod:`logkit.celery_options` and the docs test read it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "BANNER_MODES",
    "CONDITIONAL_FIELDS",
    "CONTEXT_FIELDS",
    "DEFAULT_REDACT_KEYS",
    "FORMATS",
    "OPTIONS",
    "QUEUE_FULL_POLICIES",
    "ROOT_HANDLERS",
    "SCHEMAS",
    "ConfigError",
    "LogConfig",
    "Option",
    "decide_format",
]

#: Output formats (the ``format`` option).
FORMATS: tuple[str, ...] = ("auto", "json", "console", "plain")

#: What a log call does when the ``queue=True`` queue is full (see ``queue_full``).
QUEUE_FULL_POLICIES: tuple[str, ...] = ("drop", "block")
#: Who writes the root logger's records: see ``root_handlers`` in docs/configuration.md.
ROOT_HANDLERS: tuple[str, ...] = ("auto", "replace", "add")
#: What becomes of Celery's startup banner (see logkit.banner).
BANNER_MODES: tuple[str, ...] = ("auto", "text", "event", "off")

#: Output schemas (see logkit.schemas): logkit's own fields, or a backend's names and formats.
SCHEMAS: tuple[str, ...] = ("logkit", "ecs", "gcp", "datadog", "otel")

#: Task context fields bound while a task runs, in output order.
CONTEXT_FIELDS: tuple[str, ...] = (
    "task_id",
    "task_name",
    "parent_id",
    "root_id",
    "retries",
    "worker",
    "queue",
    "correlation_id",
)

#: Fields a record leaves out where they would repeat another field or say nothing (the
#: ``always_fields`` option writes them anyway): ``root_id`` equal to the ``task_id`` (a
#: root task), ``correlation_id`` equal to the ``task_id``, ``retries`` of ``0``, the
#: ``thread`` id of the process's main thread, and event fields whose value is ``None``
#: (``nulls``: ``eta``, ``expires``, ...).
CONDITIONAL_FIELDS: tuple[str, ...] = ("root_id", "correlation_id", "retries", "thread", "nulls")

#: Context keys of a web request (bound by logkit's request middlewares) that stay in the
#: web process under ``propagate="*"``; name one in ``propagate`` to send it to tasks too.
#: ``request_id`` and ``user_id`` are not among them: they travel with ``"*"``.
REQUEST_LOCAL_FIELDS: tuple[str, ...] = ("http_method", "http_path", "client_ip")

#: Keys redacted by default (the ``redact_keys`` option).
DEFAULT_REDACT_KEYS: frozenset[str] = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "secret",
        "token",
        "access_token",
        "refresh_token",
        "authorization",
        "api_key",
        "apikey",
        "private_key",
        "credentials",
        "cookie",
        "session",
    }
)

#: Lifecycle event names (see logkit.events); used to validate per-event options.
EVENT_NAMES: tuple[str, ...] = (
    "task_received",
    "task_started",
    "task_succeeded",
    "task_failed",
    "task_retried",
    "task_revoked",
    "task_unknown",
    "task_rejected",
    "task_internal_error",
    "worker_ready",
    "worker_shutting_down",
    "worker_process_init",
    "worker_process_shutdown",
    "worker_shutdown",
    "beat_started",
    "beat_task_sent",
    "log_level_changed",
    "task_sample_changed",
    "tasks_sampled_out",
)

LEVEL_NAMES: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """An invalid logkit option: the message names the option, the value and the choices.

    For example ``logkit: invalid value for option 'format' (keyword argument): must be
    one of 'auto', 'json', 'console', 'plain'; got 'jsn'``. A ``ValueError``.
    """


# ---------------------------------------------------------------------------
# Parsers: raw value (a Python value, or a string from env/app.conf/CLI) -> typed value.
# Each raises ValueError with a message that completes "invalid value for option X: ..."
# ---------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower() if isinstance(value, str) else value
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(map(repr, choices))}; got {value!r}")
        return str(text)

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError(f"must be a boolean (true/false, 1/0, yes/no, on/off); got {value!r}")


def _positive_int(value: Any) -> int:
    try:
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number <= 0:
        raise ValueError(f"must be a positive integer; got {value!r}")
    return number


def _non_negative_int(value: Any) -> int:
    try:
        number = int(value) if not isinstance(value, (bool, float)) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number < 0:
        raise ValueError(f"must be an integer >= 0 (0 = off); got {value!r}")
    return number


def _non_negative_seconds(value: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not (0.0 <= number < float("inf")):  # NaN fails too
        raise ValueError(f"must be a number of seconds >= 0 (0 = off); got {value!r}")
    return number


def _fraction(value: Any) -> float:
    """A fraction from 0 to 1 (``task_sample``): a number, or a string such as ``"0.1"``."""
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not (0.0 <= number <= 1.0):  # NaN fails too
        raise ValueError(
            f"must be a number from 0 to 1 (0.1: one workflow in ten; 1: every workflow, "
            f"the default; 0: only the tasks that go wrong); got {value!r}"
        )
    return number


def _pairs(value: Any) -> Mapping[str, Any]:
    """``{"k": "v"}``, or ``"k=v,k2=v2"``, or an iterable of ``"k=v"`` strings."""
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        parts: Iterable[Any] = value.split(",") if isinstance(value, str) else value
        items = []
        try:
            for part in parts:
                if not isinstance(part, str) or "=" not in part:
                    raise ValueError
                key, _, val = part.partition("=")
                items.append((key.strip(), val.strip()))
        except (TypeError, ValueError):
            raise ValueError(
                f"must be a mapping or 'key=value' pairs separated by commas; got {value!r}"
            ) from None
    for key, _ in items:
        if not isinstance(key, str) or not key:
            raise ValueError(f"keys must be non-empty strings; got {key!r}")
    return MappingProxyType(dict(items))


def _names(value: Any) -> tuple[str, ...]:
    """A comma-separated string or an iterable of strings."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    else:
        try:
            parts = [p.strip() if isinstance(p, str) else p for p in value]
        except TypeError:
            raise ValueError(
                f"must be a list of names or a comma-separated string; got {value!r}"
            ) from None
    for part in parts:
        if not isinstance(part, str):
            raise ValueError(f"names must be strings; got {part!r}")
    return tuple(p for p in parts if p)


def _subset(choices: tuple[str, ...], *, star: bool = False
            ) -> Callable[[Any], tuple[str, ...]]:
    """A list of names from ``choices``; with ``star``, ``*`` stands for all of them."""

    def parse(value: Any) -> tuple[str, ...]:
        names = _names(value)
        bad = [n for n in names if n not in choices and not (star and n == "*")]
        if bad:
            valid = (*choices, "*") if star else choices
            raise ValueError(
                f"unknown name(s) {', '.join(map(repr, bad))}; valid choices: "
                f"{', '.join(map(repr, valid))}"
            )
        return choices if star and "*" in names else names

    return parse


#: Output keys that ``field_names`` can rename.
RENAMABLE: tuple[str, ...] = (
    "timestamp",
    "level",
    "logger",
    "message",
    "process",
    "thread",
    "exception",
    *CONTEXT_FIELDS,
    "args",
    "kwargs",
)


def _renames(value: Any) -> Mapping[str, str]:
    pairs = _pairs(value)
    unknown = [key for key in pairs if key not in RENAMABLE]
    if unknown:
        raise ValueError(
            f"cannot rename {', '.join(map(repr, unknown))}; renamable keys: "
            f"{', '.join(map(repr, RENAMABLE))}"
        )
    for key, val in pairs.items():
        if not isinstance(val, str) or not val:
            raise ValueError(f"the new name for {key!r} must be a non-empty string; got {val!r}")
    return pairs


def _optional_name(value: Any) -> str | None:
    """A non-empty string, or ``None`` (unset) for ``None`` or ``""``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be a string; got {value!r}")
    return value.strip() or None


def _level(value: Any) -> str:
    text = logging.getLevelName(value) if isinstance(value, int) else str(value).strip().upper()
    if text == "WARN":
        text = "WARNING"
    if text not in LEVEL_NAMES:
        raise ValueError(f"must be one of {', '.join(map(repr, LEVEL_NAMES))}; got {value!r}")
    return text


def _event_levels(value: Any) -> Mapping[str, str]:
    pairs = _pairs(value)
    out: dict[str, str] = {}
    for key, val in pairs.items():
        if key not in EVENT_NAMES:
            raise ValueError(
                f"unknown event {key!r}; valid events: {', '.join(map(repr, EVENT_NAMES))}"
            )
        try:
            out[key] = _level(val)
        except ValueError as exc:
            raise ValueError(f"level for event {key!r} {exc}") from None
    return MappingProxyType(out)


def _lower_frozenset(value: Any) -> frozenset[str]:
    return frozenset(n.lower() for n in _names(value))


# ---------------------------------------------------------------------------
# The option table: each option declared once, as a field of LogConfig
# ---------------------------------------------------------------------------

_ROW = "logkit.option"


@dataclass(frozen=True, slots=True)
class Option:
    """One option: a row of the option table (:data:`OPTIONS`).

    Everything that knows an option reads it here: :class:`LogConfig`'s validation
    (:attr:`parse`), the environment variable and the ``app.conf`` keys
    (:attr:`env`, :attr:`settings`), the ``celery --log-*`` command-line options
    (:attr:`flag`, :mod:`logkit.celery_options`) and the test that checks
    docs/configuration.md.
    """

    #: The option's name: a :class:`LogConfig` attribute and a keyword of ``install()``.
    name: str
    #: Its type, as :class:`LogConfig` annotates it (``"bool"``, ``"Mapping[str, Any]"``).
    type: str
    #: Its default value.
    default: Any
    #: Raw value (a Python value, or a string from the environment, ``app.conf`` or the
    #: command line) -> the option's value; raises ``ValueError`` with a message that
    #: completes "invalid value for option X: ...".
    parse: Callable[[Any], Any]
    #: What it does (the ``--help`` text of its flag, the API reference's line).
    doc: str
    #: The values it takes, when it is a choice (``format``: ``auto``, ``json`` ...).
    choices: tuple[str, ...] | None = None
    #: Its ``celery`` command-line option: ``--log-x``, or ``--log-x/--no-log-x`` for a
    #: boolean switch; ``None``: none.
    flag: str | None = None
    #: The value's name in the flag's help (``N``, ``SECONDS``, ``KEY=VALUE``).
    metavar: str | None = None
    #: The flag is given once per ``KEY=VALUE`` pair; the pairs are added to the mapping
    #: from the other sources.
    repeat: bool = False

    @property
    def env(self) -> str:
        """Its environment variable: ``LOGKIT_<NAME>``."""
        return f"LOGKIT_{self.name.upper()}"

    @property
    def settings(self) -> tuple[str, str]:
        """Its ``app.conf`` keys, first found wins: ``logkit_<name>``, ``LOGKIT_<NAME>``."""
        return f"logkit_{self.name}", self.env


def option(
    default: Any,
    parse: Callable[[Any], Any] | None = None,
    *,
    doc: str,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    repeat: bool = False,
) -> Any:
    """Declare one option: a :class:`LogConfig` field carrying its row of the table.

    Adding an option is adding one such field; its environment variable, ``app.conf``
    keys, validation and flag follow from it.

    Args:
        default: The default value (a mapping is copied, read-only, for each config).
        parse: The parser (:attr:`Option.parse`); not needed with ``choices``.
        doc: What the option does (:attr:`Option.doc`).
        choices: The values it takes; then ``parse`` checks that the value is one.
        flag: Its ``celery`` command-line option (:attr:`Option.flag`).
        metavar: The value's name in the flag's help.
        repeat: The flag is given once per ``KEY=VALUE`` pair (:attr:`Option.repeat`).

    Returns:
        The ``dataclasses.field`` declaring it.
    """
    if choices is not None:
        parse = _choice(choices)
    if parse is None:
        raise TypeError("an option needs parse or choices")
    metadata = {_ROW: {"parse": parse, "doc": doc, "choices": choices, "flag": flag,
                       "metavar": metavar, "repeat": repeat}}
    if isinstance(default, Mapping):  # a fresh read-only copy for each config
        items = dict(default)
        return field(default_factory=lambda: MappingProxyType(dict(items)), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class LogConfig:
    """All of logkit's options, validated and frozen.

    Build it with :meth:`resolve` (from ``app.conf``, keyword options, ``LOGKIT_*``
    environment variables and command-line options, as a worker does) or directly,
    e.g. ``LogConfig(format="json", fields={"service": "billing"})`` for a formatter.
    Each value is checked and normalised when the object is made (strings such as
    ``"true"`` or ``"k=v,k2=v2"`` are parsed). Every option is described in
    [Configuration reference](../configuration.md).

    Raises:
        ConfigError: An option's value is invalid; the message names the option, the
            value and the valid choices.
    """

    # Each field is one option, declared once (:func:`option`): its name, type, default,
    # parser, doc and command-line flag; :data:`OPTIONS` is the table the rest reads.
    format: str = option(
        "auto", choices=FORMATS, flag="--log-format",
        doc="Output format: auto (console on a terminal, json anywhere else), json, "
        "console or plain.")
    fields: Mapping[str, Any] = option(
        {}, _pairs, flag="--log-field", metavar="KEY=VALUE", repeat=True,
        doc="Static fields added to every record, e.g. service=billing (the flag is "
        "repeatable; its fields are added to those of the other sources).")
    max_field_length: int = option(
        65536, _positive_int,
        doc="Longest string kept for one field (message, extra value); longer ones are "
        "cut and marked.")
    watch_file: bool = option(
        True, _bool,
        doc="Reopen the log file when it was moved or removed (logrotate), like "
        "``WatchedFileHandler``.")
    queue: bool = option(
        False, _bool,
        doc="Non-blocking mode: records go through a queue to a background writer thread.")
    queue_size: int = option(
        10000, _positive_int, doc="Most records waiting in the ``queue=True`` queue of one "
        "process.")
    queue_full: str = option(
        "drop", choices=QUEUE_FULL_POLICIES,
        doc="When that queue is full: ``drop`` the record (counted, then reported in one "
        "``log_records_dropped`` record) or ``block`` the log call until there is room.")
    structlog: bool = option(
        True, _bool,
        doc="Route ``structlog.get_logger()`` loggers through logkit's handlers and "
        "formatter.")
    context_fields: tuple[str, ...] = option(
        CONTEXT_FIELDS, _subset(CONTEXT_FIELDS),
        doc="Which task context fields are bound while a task runs.")
    always_fields: tuple[str, ...] = option(
        (), _subset(CONDITIONAL_FIELDS, star=True),
        doc="Fields written on every record even where they repeat another field or say "
        "nothing (see ``CONDITIONAL_FIELDS``; ``*``: all of them, the field set of records "
        "before #37). By default each is left out where it is redundant.")
    field_names: Mapping[str, str] = option(
        {}, _renames,
        doc="Renames for output keys: context fields and "
        "``timestamp``/``level``/``logger``/``message``.")
    log_args: bool = option(
        False, _bool,
        doc="Add the task's ``args``/``kwargs`` (redacted, capped) to the task context.")
    redact_keys: frozenset[str] = option(
        DEFAULT_REDACT_KEYS, _lower_frozenset,
        doc="Keys whose values are replaced by ``'[REDACTED]'`` (case-insensitive, at any "
        "depth).")
    args_max_length: int = option(
        1024, _positive_int, doc="Longest ``repr`` kept for the task's args and kwargs.")
    propagate: tuple[str, ...] = option(
        ("*",), _names,
        doc="Context keys sent from the publisher to the task in its headers (``*``: all "
        "user-bound keys).")
    events: bool = option(
        True, _bool, flag="--log-events/--no-log-events",
        doc="Emit structured task/worker lifecycle events, in place of Celery's lines for "
        "the same events (default: on).")
    disabled_events: tuple[str, ...] = option(
        (), _subset(EVENT_NAMES), doc="Lifecycle events that are not emitted.")
    event_levels: Mapping[str, str] = option(
        {}, _event_levels,
        doc="Per-event level overrides, e.g. ``{\"task_succeeded\": \"DEBUG\"}``.")
    result_repr: bool = option(
        True, _bool,
        doc="Include a capped ``repr`` of the return value in ``task_succeeded`` events.")
    celery_lines: bool = option(
        False, _bool, flag="--log-celery-lines/--no-log-celery-lines",
        doc="Keep Celery's own task lines (received, succeeded, raised...) beside the "
        "events, for code that listens to Celery's loggers (``celery.app.trace``, "
        "``celery.worker.strategy``...) (default: off).")
    root_handlers: str = option(
        "auto", choices=ROOT_HANDLERS,
        doc="Who owns the root logger: ``auto`` (logkit, unless "
        "``worker_hijack_root_logger`` is off and the root already has handlers: then "
        "those write every record, with logkit's context on it), ``replace`` (logkit's "
        "handler only), ``add`` (both: lines twice).")
    banner: str = option(
        "auto", choices=BANNER_MODES,
        doc="Celery's startup banner: ``auto`` (replaced by event fields when the format "
        "is JSON), ``text`` (Celery's banner), ``event`` (replaced by event fields), "
        "``off`` (neither).")
    schema: str = option(
        "logkit", choices=SCHEMAS, flag="--log-schema",
        doc="Field names of JSON output: logkit (logkit's own, the default), ecs "
        "(Elastic), gcp (Google Cloud Logging), datadog, otel (OpenTelemetry).")
    service_name: str | None = option(
        None, _optional_name,
        doc="The service name the ``ecs``/``datadog``/``otel`` schemas report (default: "
        "the ``service`` static field, then ``DD_SERVICE`` / ``OTEL_SERVICE_NAME``).")
    gcp_project: str | None = option(
        None, _optional_name,
        doc="Google Cloud project of the ``gcp`` schema's trace names (default: the "
        "``GOOGLE_CLOUD_PROJECT``, ``GCP_PROJECT`` or ``GCLOUD_PROJECT`` env var).")
    task_buffer: int = option(
        0, _non_negative_int, flag="--log-task-buffer", metavar="N",
        doc="Keep a task's last N records below the worker's level, and write them "
        "(marked buffered) only if the task fails or retries, or logs an ERROR (0 = off, "
        "the default).")
    dedupe_window: float = option(
        0.0, _non_negative_seconds, flag="--log-dedupe-window", metavar="SECONDS",
        doc="Fold repeats of a line (same logger, level and message template) within "
        "SECONDS into one line with a repeated count (0 = off, the default).")
    task_sample: float = option(
        1.0, _fraction, flag="--log-task-sample", metavar="RATE",
        doc="Write the lines below WARNING of this share of workflows (by root id), and "
        "of every task that goes wrong: a task outside the sample keeps them and writes "
        "them first (marked sampled_out) only if it fails, retries or logs a WARNING "
        "(0 to 1; 1 = every task, the default).")

    def __post_init__(self) -> None:
        for name in OPTIONS:
            value = getattr(self, name)
            object.__setattr__(self, name, _coerce(name, value, "LogConfig"))

    # -- construction -------------------------------------------------------------

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Return the names of every option.

        Returns:
            The option names, in definition order (``format``, ``fields``, ...).
        """
        return tuple(OPTIONS)

    @classmethod
    def resolve(
        cls,
        app: Any = None,
        options: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cli: Mapping[str, Any] | None = None,
    ) -> LogConfig:
        """Merge ``app.conf``, keyword ``options``, ``LOGKIT_*`` env vars and CLI values.

        Later sources win: command-line options over environment variables over keyword
        options over ``app.conf.logkit_<name>`` settings over the defaults.

        Args:
            app: A Celery app whose ``conf`` holds ``logkit_<name>`` settings, or ``None``.
            options: Keyword options, as given to ``logkit.install(app, **options)``.
            env: Environment variables to read ``LOGKIT_<NAME>`` from (default:
                ``os.environ``).
            cli: Values of the ``celery worker --log-*`` options.

        Returns:
            The validated config.

        Raises:
            ConfigError: An unknown option name, or an invalid value (the message says
                which source it came from).
        """
        env = os.environ if env is None else env
        check_options(options or {})
        merged: dict[str, Any] = {}
        for source, values in (
            ("app.conf", _from_app_conf(app)),
            ("keyword argument", {k: (k, v) for k, v in (options or {}).items()}),
            ("environment variable", _from_env(env)),
            ("command-line option", {k: (k, v) for k, v in (cli or {}).items()}),
        ):
            for name, (label, value) in values.items():
                merged[name] = _coerce(name, value, f"{source} {label}")
        return cls(**merged)

    def replace(self, **changes: Any) -> LogConfig:
        """Return a copy with ``changes`` applied.

        Args:
            **changes: Options to change, e.g. ``replace(format="plain")``.

        Returns:
            A new, validated config; this one is unchanged.

        Raises:
            ConfigError: An unknown option name or an invalid value.
        """
        check_options(changes)
        return dataclasses.replace(self, **changes)

    def event_level(self, event: str, default: int) -> int | None:
        """Return the level a lifecycle event is logged at.

        Args:
            event: A lifecycle event name, e.g. ``"task_succeeded"``.
            default: The event's own level, used when ``event_levels`` names none.

        Returns:
            The numeric level, or ``None`` if events are off or ``event`` is disabled.
        """
        if not self.events or event in self.disabled_events:
            return None
        name = self.event_levels.get(event)
        return default if name is None else logging.getLevelName(name)


def _table() -> Mapping[str, Option]:
    rows: dict[str, Option] = {}
    for f in dataclasses.fields(LogConfig):
        default = f.default
        if default is dataclasses.MISSING:
            default = f.default_factory()  # type: ignore[operator]
        rows[f.name] = Option(f.name, str(f.type), default, **f.metadata[_ROW])
    return MappingProxyType(rows)


#: The option table: every option, by name, in :class:`LogConfig`'s order.
OPTIONS: Mapping[str, Option] = _table()


def decide_format(fmt: str, logfile: Any, isatty: Callable[[], bool]) -> str:
    """Decide what the ``format`` option means where the records go, in one place.

    ``auto`` is ``console`` on a terminal and ``json`` anywhere else (a log file, a pipe,
    a container's log collector); the process's logging (``logkit.setup``), the banner
    decision before beat configures logging and a failure reported before logging is
    configured all ask this.

    Args:
        fmt: The ``format`` option: ``auto``, ``json``, ``console`` or ``plain``.
        logfile: The log file written to (``None`` or ``""``: a stream).
        isatty: Whether that stream is a terminal (called only for ``auto`` without a
            log file).

    Returns:
        ``json``, ``console`` or ``plain``.
    """
    if fmt != "auto":
        return fmt
    return "console" if not logfile and isatty() else "json"


def _coerce(name: str, value: Any, source: str) -> Any:
    try:
        return OPTIONS[name].parse(value)
    except ValueError as exc:
        raise ConfigError(f"logkit: invalid value for option {name!r} ({source}): {exc}") from None


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate keyword options.

    Args:
        options: Option names and values, as given to ``logkit.install()``.

    Returns:
        The options with their values parsed.

    Raises:
        ConfigError: An unknown option name (the message lists the valid ones) or an
            invalid value.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"logkit: unknown option(s) {', '.join(map(repr, unknown))}; valid options: "
            f"{', '.join(LogConfig.option_names())}"
        )
    return {name: _coerce(name, value, "keyword argument") for name, value in options.items()}


def _from_env(env: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    out: dict[str, tuple[str, Any]] = {}
    for name, row in OPTIONS.items():
        if row.env in env:
            out[name] = (row.env, env[row.env])
    return out


def _from_app_conf(app: Any) -> dict[str, tuple[str, Any]]:
    if app is None:
        return {}
    conf = app.conf
    out: dict[str, tuple[str, Any]] = {}
    for name, row in OPTIONS.items():
        for key in row.settings:
            try:
                value = conf.get(key)
            except Exception:  # a broken settings object must not break logging
                value = None
            if value is not None:
                out[name] = (key, value)
                break
    return out
