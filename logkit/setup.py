"""Configure one process's logging the way Celery would, with logkit's output.

:func:`configure_process` is what the ``setup_logging`` receiver runs (and what
:func:`logkit.configure` runs from a user's own ``setup_logging`` receiver). It
mirrors ``celery.app.log.Logging.setup_logging_subsystem``: the root logger, the
``celery.task`` logger and the multiprocessing logger get a handler, the
``worker_hijack_root_logger`` setting is honoured, stdout/stderr are redirected
when ``worker_redirect_stdouts`` asks for it, and ``after_setup_logger`` /
``after_setup_task_logger`` fire with exactly the arguments Celery gives them.
"""

from __future__ import annotations

import logging
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import signals
from celery.utils.log import LoggingProxy, get_multiprocessing_logger, mlevel

from ._changes import Changes
from ._structlog import configure_structlog
from .config import ConfigError, LogConfig, decide_format
from .early import WarningHold
from .filters import add_context_filter
from .formatters import ConsoleFormatter, JsonFormatter, PlainFormatter, _TextFormatter
from .handlers import LogFileError, QueueSinkHandler, Sink, SinkHandler, _Writer
from .redaction import RedactFilter

__all__ = [
    "Active",
    "configure_process",
    "decide_color",
    "resolve_format",
    "root_owner",
]

logger = logging.getLogger("logkit")

#: Celery's defaults, used when no app is given.
DEFAULT_LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
DEFAULT_TASK_LOG_FORMAT = (
    "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"
)


@dataclass
class Active:
    """What :func:`configure_process` set up in this process."""

    config: LogConfig
    format: str
    loglevel: int
    logfile: str | None
    colorize: bool
    sink: Sink
    handlers: list[logging.Handler] = field(default_factory=list)
    #: Who writes the root logger's records: ``logkit``, ``user`` or ``both`` (:func:`root_owner`).
    root_owner: str = "logkit"
    #: The background writer of ``queue=True`` (``None`` without the queue).
    writer: _Writer | None = None
    #: Every handler that writes this configuration's records: logkit's (:attr:`handlers`),
    #: the others on the root and ``celery.task`` loggers (an ``after_setup_logger``
    #: receiver's), and, when the user's handlers write (:attr:`root_owner` ``user`` or
    #: ``both``), every handler of theirs that logkit's context filter joins. The
    #: operating tools (``task_buffer``, ``dedupe_window``) go on each of them.
    output_handlers: list[logging.Handler] = field(default_factory=list)


def resolve_format(config: LogConfig, sink: Sink) -> str:
    """The output format of ``config`` on ``sink`` (:func:`logkit.config.decide_format`)."""
    return decide_format(config.format, sink.path, sink.isatty)


def decide_color(colorize: bool | None, sink: Sink, env: Any = None) -> bool:
    """Colour only on a stream (never in a file); ``NO_COLOR`` / ``FORCE_COLOR`` win."""
    env = os.environ if env is None else env
    if sink.path is not None:
        return False
    if env.get("NO_COLOR"):
        return False
    if env.get("FORCE_COLOR", "") not in ("", "0"):
        return True
    return sink.isatty() if colorize is None else bool(colorize)


def _formatters(
    fmt: str, config: LogConfig, color: bool, log_format: str, task_log_format: str, datefmt: Any
) -> tuple[logging.Formatter, logging.Formatter]:
    if fmt == "json":
        json_formatter = JsonFormatter(config)
        return json_formatter, json_formatter
    if fmt == "console":
        console = ConsoleFormatter(config, use_color=color)
        return console, console
    return (
        PlainFormatter(log_format, datefmt, config),
        PlainFormatter(task_log_format, datefmt, config),
    )


_CLASHING = frozenset({"message", "asctime", "_logkit_ctx"})
#: Names an ``extra`` key must not have in a record from the stdlib record factory.
_RECORD_ATTRS = _CLASHING | frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__)


def stock_logger_method(name: str) -> Any:
    """The stdlib's own ``logging.Logger.<name>``, even if another library's wrapper is
    installed already (found through ``__wrapped__``), or ``None`` if it cannot be found."""
    fn: Any = vars(logging.Logger).get(name)
    for _ in range(64):  # a chain of wrappers, never a cycle
        if (
            type(fn) is types.FunctionType  # not a wrapt proxy, which mimics the names below
            and fn.__module__ == "logging"
            and fn.__qualname__ == f"Logger.{name}"
        ):
            return fn
        fn = getattr(fn, "__wrapped__", None)
        if fn is None:
            break
    return None


#: The stdlib's ``Logger.makeRecord`` (``None`` if it was replaced before logkit's import).
STOCK_MAKE_RECORD: Any = stock_logger_method("makeRecord")


def _make_record(
    self: logging.Logger,
    name: str,
    level: int,
    fn: str,
    lno: int,
    msg: object,
    args: Any,
    exc_info: Any,
    func: str | None = None,
    extra: Any = None,
    sinfo: str | None = None,
) -> logging.LogRecord:
    """``Logger.makeRecord``, but an ``extra`` key that clashes with a record attribute
    is renamed (``msg`` -> ``msg_``) instead of raising ``KeyError`` into the log call."""
    record = logging.getLogRecordFactory()(name, level, fn, lno, msg, args, exc_info, func, sinfo)
    if extra is not None:
        fields = record.__dict__
        for key in extra:
            value = extra[key]
            while key in _CLASHING or key in fields:
                key = f"{key}_"
            fields[key] = value
    return record


# logkit's wrapper over the stdlib's makeRecord (the one installed when nobody else wrapped it)
_make_record.__wrapped__ = STOCK_MAKE_RECORD  # type: ignore[attr-defined]
_make_record._logkit_make_record = True  # type: ignore[attr-defined]


def _renamed_extra(extra: Any) -> Any:
    """``extra`` with every key that names a stdlib record attribute renamed (``msg_``)."""
    if _RECORD_ATTRS.isdisjoint(extra):
        return extra
    out: dict[Any, Any] = {}
    for key in extra:
        value = extra[key]
        while key in _RECORD_ATTRS or key in out:
            key = f"{key}_"
        out[key] = value
    return out


def _bound(method: Any, instance: logging.Logger) -> Any:
    """``method`` as ``instance.makeRecord`` would give it (through ``__get__``, if any)."""
    get = getattr(type(method), "__get__", None)
    return method if get is None else get(method, instance, type(instance))


def _wrap_make_record(previous: Any) -> Callable[..., logging.LogRecord]:
    """A ``Logger.makeRecord`` that renames clashing ``extra`` keys, then calls ``previous``.

    ``previous`` is what was installed on ``logging.Logger`` (a wrapper of another library,
    such as ddtrace's, which adds its fields to the record it returns): it gets the same
    arguments, with ``extra`` renamed. A key that clashes with an attribute a record
    factory added (``otelSpanID``...) makes ``previous`` raise ``KeyError``: the record is
    then made without ``extra`` and the keys are added here, renamed against that record.
    """
    if previous is STOCK_MAKE_RECORD:
        return _make_record  # the same result, one call less per record

    def make_record(
        self: logging.Logger,
        name: str,
        level: int,
        fn: str,
        lno: int,
        msg: object,
        args: Any,
        exc_info: Any,
        func: str | None = None,
        extra: Any = None,
        sinfo: str | None = None,
    ) -> logging.LogRecord:
        call = _bound(previous, self)
        if extra is None:
            return call(name, level, fn, lno, msg, args, exc_info, func, None, sinfo)  # type: ignore[no-any-return]
        try:
            return call(  # type: ignore[no-any-return]
                name, level, fn, lno, msg, args, exc_info, func, _renamed_extra(extra), sinfo
            )
        except KeyError:  # a key named like an attribute a record factory added
            record: logging.LogRecord = call(
                name, level, fn, lno, msg, args, exc_info, func, None, sinfo
            )
        fields = record.__dict__
        for key in extra:
            value = extra[key]
            while key in _CLASHING or key in fields:
                key = f"{key}_"
            fields[key] = value
        return record

    make_record.__wrapped__ = previous  # type: ignore[attr-defined]
    make_record._logkit_make_record = True  # type: ignore[attr-defined]
    return make_record


def _has_logkit_wrapper(make_record: Any) -> bool:
    """Whether logkit's wrapper is ``make_record`` or one it wraps (via ``__wrapped__``)."""
    for _ in range(64):  # a chain of wrappers, never a cycle
        if make_record is None:
            return False
        if getattr(make_record, "_logkit_make_record", False) is True:
            return True
        make_record = getattr(make_record, "__wrapped__", None)
    return False


def tolerate_clashing_extra(changes: Changes | None = None) -> None:
    """Make every stdlib logger accept ``extra`` keys like ``msg`` or ``name`` (renamed).

    Composes with whatever ``logging.Logger.makeRecord`` is now (ddtrace wraps it to add
    ``dd.trace_id``...): logkit's wrapper calls it, it is never dropped. If logkit's
    wrapper is already installed, or wrapped by another library's (found through
    ``__wrapped__``), nothing changes, so configuring again never stacks wrappers nor
    undoes a later library's wrapper. The undo (in ``changes``) puts the previous
    ``makeRecord`` back while logkit's wrapper is the outermost one.
    """
    current = vars(logging.Logger)["makeRecord"]
    if _has_logkit_wrapper(current):
        return
    ours = _wrap_make_record(current)
    logging.Logger.makeRecord = ours  # type: ignore[method-assign]

    def undo() -> None:
        # Only when logkit's wrapper is still the outermost: a wrapper another library put
        # over it afterwards keeps working (logkit's stays under it, renaming clashing keys).
        if vars(logging.Logger).get("makeRecord") is ours:
            logging.Logger.makeRecord = current  # type: ignore[method-assign]

    if changes is not None:
        changes.add("logging.Logger.makeRecord wrapped", undo, key="makeRecord")


def _is_logkit(handler: logging.Handler) -> bool:
    return bool(getattr(handler, "_logkit", False))


def root_owner(root_handlers: str, hijack: bool, root: logging.Logger) -> str:
    """Who writes the root logger's records: ``"logkit"``, ``"user"`` or ``"both"``.

    Celery's rule, for ``root_handlers="auto"``: with ``worker_hijack_root_logger``
    on, the root's handlers are replaced (``"logkit"``); with it off, a root that
    already has handlers (a Django ``LOGGING``, a ``dictConfig``) keeps them and gets
    no other (``"user"``: each record written once, by those handlers, with logkit's
    context on it); a root without handlers gets logkit's. ``"replace"`` always
    gives ``"logkit"``, ``"add"`` gives ``"both"`` when the root has handlers.
    """
    theirs = [h for h in root.handlers if not _is_logkit(h)]
    if root_handlers == "replace" or not theirs:
        return "logkit"
    if root_handlers == "add":
        return "both"
    return "logkit" if hijack else "user"


def _give_context(changes: Changes) -> None:
    """Put logkit's context on the records the user's handlers write (for their formats)."""
    for handler in _user_handlers():
        if not isinstance(
            handler.formatter, (JsonFormatter, _TextFormatter)
        ) and add_context_filter(handler):
            changes.add(f"context filter on {handler!r}",
                        _remover(handler, handler.filters[-1]))


def _remover(handler: logging.Handler, flt: Any) -> Callable[[], None]:
    return lambda: handler.removeFilter(flt)


def _defer_to(root: logging.Logger, task_logger: logging.Logger, mp_logger: Any) -> None:
    """The user's handlers write everything: the task and multiprocessing loggers'
    records (which Celery keeps off the root) too."""
    if not [h for h in task_logger.handlers if not _is_logkit(h)]:
        task_logger.propagate = True
    if mp_logger is not None and not mp_logger.handlers:
        for handler in root.handlers:
            mp_logger.addHandler(handler)


def _output_handlers(
    handlers: list[logging.Handler], owner: str, *loggers: logging.Logger
) -> list[logging.Handler]:
    """:attr:`Active.output_handlers`: ``handlers`` (logkit's), those of ``loggers``, and
    when the user's handlers write (``owner`` ``user``/``both``) all of theirs; each once."""
    found = [*handlers]
    for target in loggers:
        found += target.handlers
    if owner != "logkit":
        found += _user_handlers()
    unique: dict[int, logging.Handler] = {}
    for handler in found:
        unique.setdefault(id(handler), handler)
    return list(unique.values())


def _user_handlers() -> list[logging.Handler]:
    """The handlers of every logger (the root first) that logkit did not add."""
    loggers: list[Any] = [logging.getLogger()]
    loggers.extend(logging.Logger.manager.loggerDict.values())
    seen: dict[int, logging.Handler] = {}
    for target in loggers:
        for handler in getattr(target, "handlers", ()):
            if not _is_logkit(handler):
                seen.setdefault(id(handler), handler)
    return list(seen.values())


#: logkit's own loggers: ``disable_existing_loggers`` in a ``dictConfig`` (Django's
#: ``LOGGING``) that runs after ``import logkit`` disables them; that would lose events.
OWN_LOGGERS: tuple[str, ...] = ("logkit", "logkit.events")


def save_logger(changes: Changes, target: Any) -> None:
    """Record ``target``'s handlers, filters, level, ``propagate`` and ``disabled`` as they
    are before logkit first changes them (once per logger), with their undo."""
    if target is None:
        return
    state = (list(target.handlers), list(target.filters), target.level, target.propagate,
             target.disabled)

    def undo() -> None:
        handlers, filters, level, propagate, disabled = state
        target.handlers[:] = handlers
        target.filters[:] = filters
        target.setLevel(level)
        target.propagate = propagate
        target.disabled = disabled

    name = target.name if target is not logging.getLogger() else ""
    changes.add(f"logger {name or 'root'!r}: handlers, level, propagate", undo,
                key=("logger", id(target)))


def _remove_handlers(target: logging.Logger, only_logkit: bool) -> None:
    for handler in list(target.handlers):
        if not only_logkit or getattr(handler, "_logkit", False):
            target.removeHandler(handler)


def configure_process(
    config: LogConfig,
    *,
    changes: Changes,
    loglevel: int | str | None = None,
    logfile: str | None = None,
    colorize: bool | None = None,
    app: Any = None,
    plain_format: str | None = None,
    fire_signals: bool = True,
    redirect_stdouts: bool | None = None,
    redirect_level: Any = None,
    configured: Callable[[Active, Any], None] | None = None,
    previous: Active | None = None,
    warnings_hold: WarningHold | None = None,
) -> Active:
    """Set up this process's loggers; return what was set up.

    Every change to the process is recorded in ``changes`` with its undo (the
    installation's record: :func:`logkit.uninstall` runs them). ``previous`` is what
    the last call set up (its queue writer reused; its sink closed once this call is
    done, so what its handlers still write, such as pending repeat counts, is written);
    ``warnings_hold`` holds the warnings given before now (replayed as records).
    ``redirect_stdouts``: whether to redirect ``sys.stdout``/``sys.stderr`` (at
    ``redirect_level``, else ``worker_redirect_stdouts_level``); ``None``: as
    ``worker_redirect_stdouts`` says (the ``setup_logging`` receiver passes what Celery
    would do for the call under way: :func:`logkit._compat.celery_redirect`).
    ``configured(active, app)`` runs once the loggers are set up, with what this call
    set up (the installation's last step: Celery's own task lines, the operating tools
    on :attr:`Active.output_handlers`); it is given the new :class:`Active`, never left
    to read it back from where the caller keeps it (which still holds ``previous``).

    Raises :class:`ConfigError` if the log file cannot be opened (the message names
    the path and the reason).
    """
    conf = app.conf if app is not None else None
    level = mlevel(loglevel or logging.WARNING)
    log_format = plain_format or (conf.worker_log_format if conf else DEFAULT_LOG_FORMAT)
    task_log_format = plain_format or (
        conf.worker_task_log_format if conf else DEFAULT_TASK_LOG_FORMAT
    )
    datefmt = getattr(conf, "worker_log_datefmt", None) if conf else None
    hijack = conf.worker_hijack_root_logger if conf else True
    owner = root_owner(config.root_handlers, hijack, logging.getLogger())
    # Celery's hijack: every handler goes (with "replace" too); else only logkit's own.
    replace_all = owner == "logkit" and (hijack or config.root_handlers == "replace")

    try:
        sink = Sink(logfile, watch=config.watch_file)
    except LogFileError as exc:
        raise ConfigError(f"logkit: {exc.strerror}") from exc
    changes.add(f"sink {sink.name} opened", sink.close)

    root = logging.getLogger()
    task_logger = logging.getLogger("celery.task")
    celery_logger = logging.getLogger("celery")
    redirected = logging.getLogger("celery.redirected")
    mp_logger = get_multiprocessing_logger()
    # py.warnings: logging's captureWarnings gives it a NullHandler at the first warning
    for target in (root, task_logger, celery_logger, redirected, mp_logger,
                   *(logging.getLogger(name) for name in (*OWN_LOGGERS, "py.warnings"))):
        save_logger(changes, target)
    for target in (root, task_logger, celery_logger, redirected, mp_logger):
        if target is not None:
            _remove_handlers(target, only_logkit=not replace_all or target is mp_logger)

    fmt = resolve_format(config, sink)
    color = fmt == "console" and decide_color(colorize, sink)
    root_formatter, task_formatter = _formatters(
        fmt, config, color, log_format, task_log_format, datefmt
    )
    handlers: list[logging.Handler] = []
    writer: _Writer | None = None
    if config.queue:
        writer = previous.writer if previous is not None else None
        if writer is None:
            writer = _Writer()  # its thread starts at the first record
            changes.add("queue writer thread", writer.stop)

    def make_handler(formatter: logging.Formatter) -> logging.Handler:
        handler: logging.Handler = SinkHandler(sink, formatter)
        if config.queue:
            handler = QueueSinkHandler(
                handler, config.queue_size, block=config.queue_full == "block", writer=writer
            )
        if config.redact_keys:  # secrets in Celery's own lines (args/kwargs reprs, exceptions)
            handler.addFilter(RedactFilter(config.redact_keys))
        handler._logkit = True  # type: ignore[attr-defined]
        handlers.append(handler)
        return handler

    for name in OWN_LOGGERS:
        logging.getLogger(name).disabled = False
    if owner != "logkit":
        _give_context(changes)
    if owner == "user":
        _defer_to(root, task_logger, mp_logger)
    else:
        root_handler = make_handler(root_formatter)
        root.addHandler(root_handler)
        if mp_logger is not None:
            mp_logger.addHandler(root_handler)
    root.setLevel(level)
    if mp_logger is not None:
        mp_logger.setLevel(level if os.environ.get("MP_LOG") else logging.ERROR)

    # Celery passes the colour decision it made, and its own %-format strings.
    signal_colorize = bool(color) if colorize is None else bool(colorize)
    if fire_signals:
        signals.after_setup_logger.send(
            sender=None,
            logger=root,
            loglevel=level,
            logfile=logfile,
            format=log_format,
            colorize=signal_colorize,
        )

    if owner != "user":
        task_logger.addHandler(make_handler(task_formatter))
        task_logger.propagate = 0  # type: ignore[assignment]  # an int, as Celery sets it
    task_logger.setLevel(level)
    if fire_signals:
        signals.after_setup_task_logger.send(
            sender=None,
            logger=task_logger,
            loglevel=level,
            logfile=logfile,
            format=task_log_format,
            colorize=signal_colorize,
        )

    if config.structlog:
        configure_structlog(changes, own_output=owner != "user")
    # logging.captureWarnings(True), and the warnings held until now as records
    (warnings_hold or WarningHold()).capture(changes)
    tolerate_clashing_extra(changes)

    if redirect_stdouts is None:
        redirect_stdouts = bool(conf and conf.worker_redirect_stdouts)
    if redirect_stdouts and not isinstance(sys.stdout, LoggingProxy):
        if redirect_level is None:
            redirect_level = conf.worker_redirect_stdouts_level if conf else "WARNING"
        _redirect(changes, app, redirected, redirect_level)

    active = Active(config, fmt, level, logfile, signal_colorize, sink, handlers, owner, writer,
                    _output_handlers(handlers, owner, root, task_logger))
    try:
        if configured is not None:
            configured(active, app)
    finally:
        if previous is not None and previous.sink is not sink:
            _close_previous(previous)
    logger.debug(
        "logkit configured logging: format=%s level=%s logfile=%s",
        fmt,
        logging.getLevelName(level),
        logfile,
    )
    return active


#: Seconds a new configuration waits for the queue (``queue=True``) to write what the
#: previous one's handlers queued, before their sink is closed.
PREVIOUS_QUEUE_WAIT = 2.0


def _close_previous(previous: Active) -> None:
    """Close the previous configuration's sink, once what its handlers queued is written
    (waiting at most :data:`PREVIOUS_QUEUE_WAIT` seconds; a record still queued then is
    counted as dropped when its write fails, and reported)."""
    if previous.writer is not None:
        previous.writer.flush(PREVIOUS_QUEUE_WAIT)
    previous.sink.close()


#: Environment variables Celery's ``redirect_stdouts`` sets (for its child processes).
_REDIRECT_ENV = ("CELERY_LOG_REDIRECT", "CELERY_LOG_REDIRECT_LEVEL")


def _redirect(changes: Changes, app: Any, redirected: logging.Logger, level: Any) -> None:
    """Redirect ``sys.stdout``/``sys.stderr`` to the ``celery.redirected`` logger, as
    Celery does; recorded with its undo (streams put back while they are still the
    proxies, the environment variables Celery sets restored)."""
    streams = (sys.stdout, sys.stderr)
    env = {name: os.environ.get(name) for name in _REDIRECT_ENV}
    if app is not None:
        app.log.redirect_stdouts(level)
    else:
        sys.stdout = sys.stderr = LoggingProxy(redirected, level)
    proxies = (sys.stdout, sys.stderr)

    def undo() -> None:
        if sys.stdout is proxies[0]:
            sys.stdout = streams[0]
        if sys.stderr is proxies[1]:
            sys.stderr = streams[1]
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    changes.add("sys.stdout/sys.stderr redirected", undo)
