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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import signals
from celery.utils.log import LoggingProxy, get_multiprocessing_logger, mlevel

from ._structlog import configure_structlog
from .config import ConfigError, LogConfig
from .formatters import ConsoleFormatter, JsonFormatter, PlainFormatter
from .handlers import LogFileError, QueueSinkHandler, Sink, SinkHandler
from .redaction import RedactFilter

__all__ = ["Active", "active", "configure_process", "decide_color", "resolve_format"]

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


_active: Active | None = None


def active() -> Active | None:
    """The logging set up in this process by logkit, or ``None``."""
    return _active


def resolve_format(config: LogConfig, sink: Sink) -> str:
    """``auto`` becomes ``console`` on a terminal and ``json`` anywhere else."""
    if config.format != "auto":
        return config.format
    return "console" if sink.path is None and sink.isatty() else "json"


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


def tolerate_clashing_extra() -> None:
    """Make every stdlib logger accept ``extra`` keys like ``msg`` or ``name`` (renamed)."""
    logging.Logger.makeRecord = _make_record  # type: ignore[method-assign]


def _remove_handlers(target: logging.Logger, only_logkit: bool) -> None:
    for handler in list(target.handlers):
        if not only_logkit or getattr(handler, "_logkit", False):
            target.removeHandler(handler)


def configure_process(
    config: LogConfig,
    *,
    loglevel: int | str | None = None,
    logfile: str | None = None,
    colorize: bool | None = None,
    app: Any = None,
    plain_format: str | None = None,
    fire_signals: bool = True,
    redirect_stdouts: bool | None = None,
    configured: Callable[[LogConfig, Any], None] | None = None,
) -> Active:
    """Set up this process's loggers; return what was set up.

    ``configured(config, app)`` runs once they are (the installation's last step:
    :mod:`logkit.events.prose` decides about Celery's own task lines there).

    Raises :class:`ConfigError` if the log file cannot be opened (the message names
    the path and the reason).
    """
    global _active
    conf = app.conf if app is not None else None
    level = mlevel(loglevel or logging.WARNING)
    log_format = plain_format or (conf.worker_log_format if conf else DEFAULT_LOG_FORMAT)
    task_log_format = plain_format or (
        conf.worker_task_log_format if conf else DEFAULT_TASK_LOG_FORMAT
    )
    datefmt = getattr(conf, "worker_log_datefmt", None) if conf else None
    hijack = conf.worker_hijack_root_logger if conf else True

    try:
        sink = Sink(logfile, watch=config.watch_file)
    except LogFileError as exc:
        raise ConfigError(f"logkit: {exc.strerror}") from exc

    root = logging.getLogger()
    task_logger = logging.getLogger("celery.task")
    celery_logger = logging.getLogger("celery")
    redirected = logging.getLogger("celery.redirected")
    mp_logger = get_multiprocessing_logger()
    for target in (root, task_logger, celery_logger, redirected, mp_logger):
        if target is not None:
            _remove_handlers(target, only_logkit=not hijack or target is mp_logger)
    if _active is not None and _active.sink is not sink:
        _active.sink.close()

    fmt = resolve_format(config, sink)
    color = fmt == "console" and decide_color(colorize, sink)
    root_formatter, task_formatter = _formatters(
        fmt, config, color, log_format, task_log_format, datefmt
    )
    handlers: list[logging.Handler] = []

    def make_handler(formatter: logging.Formatter) -> logging.Handler:
        handler: logging.Handler = SinkHandler(sink, formatter)
        if config.queue:
            handler = QueueSinkHandler(handler)
        if config.redact_keys:  # secrets in Celery's own lines (args/kwargs reprs, exceptions)
            handler.addFilter(RedactFilter(config.redact_keys))
        handler._logkit = True  # type: ignore[attr-defined]
        handlers.append(handler)
        return handler

    root_handler = make_handler(root_formatter)
    root.addHandler(root_handler)
    root.setLevel(level)
    if mp_logger is not None:
        mp_logger.addHandler(root_handler)
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

    task_logger.addHandler(make_handler(task_formatter))
    task_logger.setLevel(level)
    task_logger.propagate = 0  # type: ignore[assignment]  # an int, as Celery sets it
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
        configure_structlog()
    logging.captureWarnings(True)
    tolerate_clashing_extra()

    if redirect_stdouts is None:
        redirect_stdouts = bool(conf and conf.worker_redirect_stdouts)
    if redirect_stdouts and not isinstance(sys.stdout, LoggingProxy):
        redirect_level = conf.worker_redirect_stdouts_level if conf else "WARNING"
        if app is not None:
            app.log.redirect_stdouts(redirect_level)
        else:
            proxy = LoggingProxy(redirected, redirect_level)
            sys.stdout = sys.stderr = proxy

    _active = Active(config, fmt, level, logfile, signal_colorize, sink, handlers)
    if configured is not None:
        configured(config, app)
    logger.debug(
        "logkit configured logging: format=%s level=%s logfile=%s",
        fmt,
        logging.getLevelName(level),
        logfile,
    )
    return _active
