"""Celery signal receivers, one small function per signal, connected by :func:`install`.

Data flow: signal -> context (:mod:`logkit.context`) -> record -> formatter -> sink.
A receiver never formats anything.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from celery import signals
from celery.utils.saferepr import saferepr

from . import context
from ._structlog import contextvars_snapshot, restore_contextvars
from .config import ConfigError, LogConfig, check_options
from .formatters import cap, safe_repr
from .handlers import flush_queues
from .redaction import redact_positional
from .setup import Active, configure_process

__all__ = ["HEADER", "Installation", "TaskContext", "install", "installation"]

logger = logging.getLogger("logkit")

#: Task message header that carries the publisher's propagated context.
HEADER = "logkit_context"

_REDACTED = "[REDACTED]"
_SIMPLE = (str, int, float, bool, type(None))


def redact(value: Any, keys: frozenset[str], _depth: int = 0) -> Any:
    """Copy of ``value`` with the values of sensitive keys (at any depth) replaced."""
    if _depth > 32:
        return "<too deep>"
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            name = k.lower() if isinstance(k, str) else ""
            if name and any(secret in name for secret in keys):
                out[k] = _REDACTED
            else:
                out[k] = redact(v, keys, _depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(v, keys, _depth + 1) for v in value]
    return value


def _has_sensitive_key(value: Any, keys: frozenset[str], _depth: int = 0) -> bool:
    """Whether :func:`redact` would replace anything in ``value``."""
    if _depth > 32:
        return True
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str) and any(secret in k.lower() for secret in keys):
                return True
            if _has_sensitive_key(v, keys, _depth + 1):
                return True
        return False
    if isinstance(value, (list, tuple)):
        return any(_has_sensitive_key(v, keys, _depth + 1) for v in value)
    return False


def _queue_of(request: Any) -> Any:
    info = getattr(request, "delivery_info", None) or {}
    return info.get("routing_key") or info.get("queue")


#: Each task field as a Python expression (of ``task`` and ``req``, its request), for the
#: function :func:`_compile_fill` writes.
_EXPRESSIONS: dict[str, str] = {
    "task_id": "req.id",
    "task_name": "task.name",
    "parent_id": "req.parent_id",
    "root_id": "req.root_id",
    "retries": "req.retries",
    "worker": "req.hostname",
    "queue": "_queue_of(req)",
    "correlation_id": "req.correlation_id",
}


def _compile_fill(fields: list[tuple[str, str]]) -> Callable[[Any, Any, dict[str, Any]], None]:
    """A function that puts the chosen task fields (``(output name, field)``) into a dict.

    Written once per config, like attrs writes ``__init__``: one inline attribute
    read per field, instead of a loop calling a getter per field on every task.
    """
    lines = ["def fill(task, req, values):"]
    for out, name in fields:
        lines += [
            "    try:",
            f"        v = {_EXPRESSIONS[name]}",
            "    except Exception:",
            "        v = None",
            "    if v is not None:",
            f"        values[{out!r}] = v",
        ]
    lines.append("    return None")
    namespace: dict[str, Any] = {"_queue_of": _queue_of}
    exec(compile("\n".join(lines), "<logkit task context>", "exec"), namespace)
    fill: Callable[[Any, Any, dict[str, Any]], None] = namespace["fill"]
    return fill


class TaskContext:
    """Builds the context bound for a task, with field choices and names decided once."""

    def __init__(self, config: LogConfig) -> None:
        names = config.field_names
        self.config = config
        #: ``fill(task, request, values)``: put the chosen task fields into ``values``.
        self.fill = _compile_fill([(names.get(n, n), n) for n in config.context_fields])
        self._log_args = config.log_args
        #: Output names of the task's own fields: never propagated to child tasks.
        self.task_keys = frozenset(names.get(n, n) for n in (*_EXPRESSIONS, "args", "kwargs"))
        self.propagate_all = "*" in config.propagate
        self.propagate = frozenset(config.propagate) - {"*"}
        self.args_key = names.get("args", "args")
        self.structlog = config.structlog
        self.task_id_key = names.get("task_id", "task_id")
        self.kwargs_key = names.get("kwargs", "kwargs")

    def for_task(self, task: Any, args: Any = None, kwargs: Any = None) -> dict[str, Any]:
        """The context to bind while ``task`` runs: propagated keys, then the task fields."""
        request = task.request
        values: dict[str, Any] = {}
        inherited = getattr(request, HEADER, None)
        if isinstance(inherited, Mapping):
            values.update(inherited)
        self.fill(task, request, values)
        if self._log_args:
            keys, limit = self.config.redact_keys, self.config.args_max_length
            positional = redact_positional(task, args, keys)
            values[self.args_key] = cap(safe_repr(redact(positional, keys)), limit)
            values[self.kwargs_key] = cap(safe_repr(redact(dict(kwargs or {}), keys)), limit)
        return values

    def to_propagate(self, ctx: Mapping[str, Any]) -> dict[str, Any]:
        """The part of ``ctx`` that travels in a published task's headers (JSON-safe)."""
        out: dict[str, Any] = {}
        for key, value in ctx.items():
            if key in self.task_keys or not isinstance(key, str):
                continue
            if self.propagate_all or key in self.propagate:
                out[key] = value if isinstance(value, _SIMPLE) else safe_repr(value)
        return out


class Installation:
    """logkit installed on one Celery app: its options and, once resolved, its config."""

    def __init__(self, app: Any, options: Mapping[str, Any]) -> None:
        self.app = app
        self.options = check_options(options)
        self.cli: dict[str, Any] = {}
        self._config: LogConfig | None = None
        self._task_context: TaskContext | None = None
        self.scope = context.TaskScope()
        #: structlog.contextvars as they were when a task started, by (task id, thread).
        self.structlog_snapshots: dict[tuple[str, int], dict[str, Any]] = {}

    @property
    def config(self) -> LogConfig:
        """The resolved config (kwargs, ``app.conf``, env, CLI); resolved once."""
        if self._config is None:
            self.use(LogConfig.resolve(self.app, self.options, cli=self.cli))
        assert self._config is not None
        return self._config

    def use(self, config: LogConfig) -> None:
        self._config = config
        self._task_context = TaskContext(config)

    @property
    def task_context(self) -> TaskContext:
        if self._task_context is None:
            _ = self.config
        assert self._task_context is not None
        return self._task_context


_installation: Installation | None = None


def installation() -> Installation | None:
    """The current installation (set by :func:`install`), or ``None``."""
    return _installation


def _other_setup_logging_receivers() -> list[Any]:
    try:
        live = signals.setup_logging._live_receivers(None)
    except Exception:
        live = [r for _, r in signals.setup_logging.receivers]
    return [r for r in live if r is not on_setup_logging]


# ---------------------------------------------------------------------------
# Receivers
# ---------------------------------------------------------------------------


def on_setup_logging(
    loglevel: Any = None,
    logfile: Any = None,
    format: Any = None,
    colorize: Any = None,
    **_: Any,
) -> None:
    """``setup_logging``: configure this process, unless the user connected their own."""
    others = _other_setup_logging_receivers()
    if others:
        logger.debug(
            "logkit: not configuring logging: setup_logging has another receiver (%s); "
            "call logkit.configure() from it to use logkit's output",
            ", ".join(getattr(r, "__qualname__", repr(r)) for r in others),
        )
        return
    inst = _installation
    if inst is None:
        return
    try:
        configure_process(
            inst.config, loglevel=loglevel, logfile=logfile, colorize=colorize, app=inst.app
        )
    except ConfigError as exc:
        # SystemExit passes through Celery's signal dispatch and stops the worker cleanly.
        print(str(exc), file=sys.__stderr__, flush=True)
        raise SystemExit(1) from exc


def on_task_prerun(task_id: str | None = None, task: Any = None, args: Any = None,
                   kwargs: Any = None, **_: Any) -> None:
    """``task_prerun``: bind the task's context for every record until ``task_postrun``."""
    inst = _installation
    if inst is None or task is None:
        return
    task_context = inst.task_context
    try:
        values = task_context.for_task(task, args, kwargs)
    except Exception as exc:  # never break a task because of logging
        values = {"task_id": task_id, "logkit_error": f"context unavailable: {exc!r}"}
    key = task_id or values.get("task_id", "")
    inst.scope.enter(key, values, task_context.task_keys)
    if task_context.structlog:  # what the task binds with structlog.contextvars ends with it too
        inst.structlog_snapshots[(key, threading.get_ident())] = contextvars_snapshot()
    hook = _task_hooks[0]
    if hook is not None:
        hook(inst, task_id, task)


def on_task_postrun(task_id: str | None = None, task: Any = None, retval: Any = None,
                    state: Any = None, **_: Any) -> None:
    """``task_postrun``: restore the context that was there before the task."""
    inst = _installation
    if inst is None:
        return
    hook = _task_hooks[1]
    if hook is not None:
        hook(inst, task_id, task, retval, state)
    inst.scope.exit(task_id or "")
    if inst.structlog_snapshots:
        snapshot = inst.structlog_snapshots.pop((task_id or "", threading.get_ident()), None)
        if snapshot is not None:
            restore_contextvars(snapshot)


#: ``(started, finished)``: called by the two receivers above, with the task's context
#: bound (set by :mod:`logkit.events`). One receiver per signal, not two, because
#: Celery's dispatch costs per receiver on every task.
_task_hooks: list[Any] = [None, None]


def set_task_hooks(
    started: Callable[[Installation, Any, Any], None] | None,
    finished: Callable[[Installation, Any, Any, Any, Any], None] | None,
) -> None:
    """Set the functions called at the start and end of each task (they must not raise).

    ``started(installation, task_id, task)`` runs right after the task's context is
    bound, ``finished(installation, task_id, task, retval, state)`` right before it
    is restored.
    """
    _task_hooks[:] = [started, finished]


def on_before_task_publish(headers: Any = None, body: Any = None, **_: Any) -> None:
    """``before_task_publish``: put the propagated part of the context in the headers."""
    inst = _installation
    if inst is None or not isinstance(headers, dict):
        return
    if "argsrepr" in headers:
        redact_reprs(inst, headers, body)
    ctx = context.current()
    if not ctx:
        return
    try:
        carried = inst.task_context.to_propagate(ctx)
    except Exception:
        return
    if carried:
        headers[HEADER] = carried


def redact_reprs(inst: Installation, headers: dict[str, Any], body: Any) -> None:
    """Rewrite a protocol 2 message's ``argsrepr``/``kwargsrepr`` headers (which Flower,
    result backends and Celery's own lines show) with secrets redacted: kwargs by key,
    positional arguments by the task's parameter names. The body is never changed."""
    try:
        keys = inst.config.redact_keys
        if not keys or not isinstance(body, (tuple, list)) or len(body) < 2:
            return
        args, kwargs = body[0], body[1]
        task = inst.app.tasks.get(headers.get("task"))
        amqp = inst.app.amqp
        if args and task is not None:
            positional = redact_positional(task, args, keys)
            if _has_sensitive_key(args, keys) or any(
                a is not b for a, b in zip(positional, args, strict=False)
            ):
                clean = tuple(redact(positional, keys))
                headers["argsrepr"] = saferepr(clean, amqp.argsrepr_maxsize)
        if kwargs and _has_sensitive_key(kwargs, keys):
            headers["kwargsrepr"] = saferepr(redact(kwargs, keys), amqp.kwargsrepr_maxsize)
    except Exception:  # never break a publish because of logging
        logger.debug("logkit: could not redact the argsrepr headers", exc_info=True)


def install(app: Any, **options: Any) -> Installation:
    """Make logkit own ``app``'s worker logging; return the :class:`Installation`.

    Options are validated now (a bad one raises :class:`ConfigError`); ``app.conf``,
    ``LOGKIT_*`` env vars and command-line options are merged in when the worker
    configures logging. Calling it again replaces the previous installation.
    """
    global _installation
    inst = Installation(app, options)
    _installation = inst
    signals.setup_logging.connect(on_setup_logging, weak=False, dispatch_uid="logkit.setup")
    _connect(inst)
    return inst


def _flush(**_: Any) -> None:
    """Write out the non-blocking queue (``queue=True``) before the process exits."""
    flush_queues()


#: Functions called with the new :class:`Installation` by :func:`install` (events, CLI...).
_INSTALL_HOOKS: list[Callable[[Installation], None]] = []


def _connect(inst: Installation) -> None:
    """Connect the task receivers and run the install hooks (all idempotent)."""
    signals.task_prerun.connect(on_task_prerun, weak=False, dispatch_uid="logkit.prerun")
    signals.task_postrun.connect(on_task_postrun, weak=False, dispatch_uid="logkit.postrun")
    signals.before_task_publish.connect(
        on_before_task_publish, weak=False, dispatch_uid="logkit.publish"
    )
    for hook in _INSTALL_HOOKS:
        hook(inst)
    # Connected last, so records logged by other receivers of these signals are written too.
    # Prefork children leave with os._exit (no atexit): flush on worker_process_shutdown.
    signals.worker_process_shutdown.connect(_flush, weak=False, dispatch_uid="logkit.flush.child")
    signals.worker_shutdown.connect(_flush, weak=False, dispatch_uid="logkit.flush")


def configure(
    loglevel: int | str | None = None,
    logfile: str | None = None,
    format: str | None = None,
    colorize: bool | None = None,
    *,
    app: Any = None,
    **options: Any,
) -> Active:
    """Set up logkit's logging now, e.g. from your own ``setup_logging`` receiver.

    ``format`` is a logkit format (``json``, ``console``, ``plain``, ``auto``) or a
    ``%``-style format string (Celery's ``format`` argument), which means ``plain``
    with that string. Fires ``after_setup_logger`` and ``after_setup_task_logger``.
    Returns what was set up; raises :class:`ConfigError` for a bad option or an
    unwritable log file.
    """
    global _installation
    plain_format = None
    if format is not None and "%(" in format:
        plain_format, format = format, "plain"
    if format is not None:
        options["format"] = format
    inst = _installation
    if app is None and inst is not None:
        app = inst.app
    if inst is None or inst.app is not app:
        inst = Installation(app, options)
        _installation = inst
    config = LogConfig.resolve(app, {**inst.options, **check_options(options)}, cli=inst.cli)
    inst.use(config)
    _connect(inst)
    return configure_process(
        config,
        loglevel=loglevel,
        logfile=logfile,
        colorize=colorize,
        app=app,
        plain_format=plain_format,
        redirect_stdouts=None if app is not None else False,
    )
