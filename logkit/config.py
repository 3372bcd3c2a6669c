"""`LogConfig`: logkit's options as one frozen, validated object.

Options can come from four places. Highest precedence first:

1. ``celery`` command-line preload options (``--log-format`` ...), when given;
2. ``LOGKIT_<NAME>`` environment variables (e.g. ``LOGKIT_FORMAT=json``);
3. keyword arguments to :func:`logkit.install` / :func:`logkit.configure`;
4. ``app.conf.logkit_<name>`` settings of the Celery app;

and then the defaults below. Every value is validated once, when the config is
resolved; an invalid value raises :class:`ConfigError` naming the option, where
it came from, the value and the valid choices.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

__all__ = [
    "BANNER_MODES",
    "CONTEXT_FIELDS",
    "DEFAULT_REDACT_KEYS",
    "FORMATS",
    "QUEUE_FULL_POLICIES",
    "ROOT_HANDLERS",
    "SCHEMAS",
    "ConfigError",
    "LogConfig",
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


T = TypeVar("T")

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


def _subset(choices: tuple[str, ...]) -> Callable[[Any], tuple[str, ...]]:
    def parse(value: Any) -> tuple[str, ...]:
        names = _names(value)
        bad = [n for n in names if n not in choices]
        if bad:
            raise ValueError(
                f"unknown name(s) {', '.join(map(repr, bad))}; valid choices: "
                f"{', '.join(map(repr, choices))}"
            )
        return names

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


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "format": _choice(FORMATS),
    "fields": _pairs,
    "max_field_length": _positive_int,
    "watch_file": _bool,
    "queue": _bool,
    "queue_size": _positive_int,
    "queue_full": _choice(QUEUE_FULL_POLICIES),
    "structlog": _bool,
    "context_fields": _subset(CONTEXT_FIELDS),
    "field_names": _renames,
    "log_args": _bool,
    "redact_keys": _lower_frozenset,
    "args_max_length": _positive_int,
    "propagate": _names,
    "events": _bool,
    "disabled_events": _subset(EVENT_NAMES),
    "event_levels": _event_levels,
    "result_repr": _bool,
    "root_handlers": _choice(ROOT_HANDLERS),
    "banner": _choice(BANNER_MODES),
    "schema": _choice(SCHEMAS),
    "service_name": _optional_name,
    "gcp_project": _optional_name,
    "task_buffer": _non_negative_int,
    "dedupe_window": _non_negative_seconds,
    "task_sample": _fraction,
}


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

    #: Output format: ``auto`` (console on a TTY, JSON otherwise), ``json``, ``console``, ``plain``.
    format: str = "auto"
    #: Static fields added to every record (e.g. ``{"service": "billing", "env": "prod"}``).
    fields: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: Longest string kept for one field (message, extra value); longer ones are cut and marked.
    max_field_length: int = 65536
    #: Reopen the log file when it was moved or removed (logrotate), like ``WatchedFileHandler``.
    watch_file: bool = True
    #: Non-blocking mode: records go through a queue to a background writer thread.
    queue: bool = False
    #: Most records waiting in the ``queue=True`` queue of one process.
    queue_size: int = 10000
    #: When that queue is full: ``drop`` the record (counted, then reported in one
    #: ``log_records_dropped`` record) or ``block`` the log call until there is room.
    queue_full: str = "drop"
    #: Route ``structlog.get_logger()`` loggers through logkit's handlers and formatter.
    structlog: bool = True
    #: Which task context fields are bound while a task runs.
    context_fields: tuple[str, ...] = CONTEXT_FIELDS
    #: Renames for output keys: context fields and ``timestamp``/``level``/``logger``/``message``.
    field_names: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: Add the task's ``args``/``kwargs`` (redacted, capped) to the task context.
    log_args: bool = False
    #: Keys whose values are replaced by ``'[REDACTED]'`` (case-insensitive, at any depth).
    redact_keys: frozenset[str] = DEFAULT_REDACT_KEYS
    #: Longest ``repr`` kept for the task's args and kwargs.
    args_max_length: int = 1024
    #: Context keys sent from the publisher to the task in its headers (``*``: all user-bound keys).
    propagate: tuple[str, ...] = ("*",)
    #: Emit structured lifecycle events (and drop Celery's prose lines for the same events).
    events: bool = True
    #: Lifecycle events that are not emitted.
    disabled_events: tuple[str, ...] = ()
    #: Per-event level overrides, e.g. ``{"task_succeeded": "DEBUG"}``.
    event_levels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: Include a capped ``repr`` of the return value in ``task_succeeded`` events.
    result_repr: bool = True
    #: Who owns the root logger: ``auto`` (logkit, unless ``worker_hijack_root_logger`` is
    #: off and the root already has handlers: then those write every record, with logkit's
    #: context on it), ``replace`` (logkit's handler only), ``add`` (both: lines twice).
    root_handlers: str = "auto"
    #: Celery's startup banner: ``auto`` (replaced by event fields when the format is JSON),
    #: ``text`` (Celery's banner), ``event`` (replaced by event fields), ``off`` (neither).
    banner: str = "auto"
    #: Field names and formats of JSON output: ``logkit`` (logkit's own), ``ecs`` (Elastic),
    #: ``gcp`` (Google Cloud Logging), ``datadog``, ``otel`` (OpenTelemetry log data model).
    schema: str = "logkit"
    #: The service name the ``ecs``/``datadog``/``otel`` schemas report (default: the
    #: ``service`` static field, then ``DD_SERVICE`` / ``OTEL_SERVICE_NAME``).
    service_name: str | None = None
    #: Google Cloud project of the ``gcp`` schema's trace names (default: the
    #: ``GOOGLE_CLOUD_PROJECT``, ``GCP_PROJECT`` or ``GCLOUD_PROJECT`` env var).
    gcp_project: str | None = None
    #: Keep up to this many of a task's records below the worker's level, and write them
    #: (``buffered: true``) only if the task fails or retries (or logs ERROR); 0 = off.
    task_buffer: int = 0
    #: Seconds within which a repeat of a written record (same logger, level and message
    #: template) is counted instead of written; one ``repeated: N`` record follows; 0 = off.
    dedupe_window: float = 0.0
    #: The share of workflows (tasks by their ``root_id``) whose lines below WARNING are
    #: written; a task outside the sample writes its lines only if it goes wrong (fails,
    #: retries, logs WARNING or above): then the lines it kept come first. 1 = every task.
    task_sample: float = 1.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _coerce(f.name, value, "LogConfig"))

    # -- construction -------------------------------------------------------------

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Return the names of every option.

        Returns:
            The option names, in definition order (``format``, ``fields``, ...).
        """
        return tuple(f.name for f in dataclasses.fields(cls))

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


def _coerce(name: str, value: Any, source: str) -> Any:
    try:
        return _PARSERS[name](value)
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
    unknown = sorted(set(options) - set(_PARSERS))
    if unknown:
        raise ConfigError(
            f"logkit: unknown option(s) {', '.join(map(repr, unknown))}; valid options: "
            f"{', '.join(LogConfig.option_names())}"
        )
    return {name: _coerce(name, value, "keyword argument") for name, value in options.items()}


def _from_env(env: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    out: dict[str, tuple[str, Any]] = {}
    for name in _PARSERS:
        var = f"LOGKIT_{name.upper()}"
        if var in env:
            out[name] = (var, env[var])
    return out


def _from_app_conf(app: Any) -> dict[str, tuple[str, Any]]:
    if app is None:
        return {}
    conf = app.conf
    out: dict[str, tuple[str, Any]] = {}
    for name in _PARSERS:
        for key in (f"logkit_{name}", f"LOGKIT_{name.upper()}"):
            try:
                value = conf.get(key)
            except Exception:  # a broken settings object must not break logging
                value = None
            if value is not None:
                out[name] = (key, value)
                break
    return out
