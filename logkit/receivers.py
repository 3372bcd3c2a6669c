"""Celery signal receivers, one small function per signal, connected by
:func:`logkit.install.install` (the composition root), and the :class:`Installation`
they serve.

``task_prerun`` binds the task's context, then calls the installation's
``task_started`` (the ``task_started`` event, set by the root); ``task_postrun``
calls its ``task_finished``, then restores the context. One receiver per signal,
not two, because Celery's dispatch costs per receiver on every task.

Data flow: signal -> context (:mod:`logkit.context`) -> record -> formatter -> sink.
A receiver never formats anything.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from celery import signals
from celery.app.task import Context
from celery.utils.nodenames import gethostname
from celery.utils.saferepr import saferepr

from . import _compat, context
from ._changes import Changes
from ._safe import log_exception
from ._structlog import contextvars_snapshot, restore_contextvars
from .config import REQUEST_LOCAL_FIELDS, ConfigError, LogConfig, check_options
from .early import WarningHold, intended_format, report_failure
from .formatters import cap, safe_repr
from .redaction import RedactFilter, has_sensitive_key, redact, redact_positional
from .sample import Sampler
from .setup import Active, configure_process
from .trace import Ids, span_lookup

__all__ = [
    "HEADER", "PUBLISHED", "Installation", "TaskContext", "activate", "installation",
    "order_after_tracing",
]

logger = logging.getLogger("logkit")

#: Task message header that carries the publisher's propagated context.
HEADER = "logkit_context"
#: Task message header with the publish time (``time.time()``), for ``queued_ms``.
PUBLISHED = "logkit_published"

_SIMPLE = (str, int, float, bool, type(None))


def _queue_of(request: Any) -> Any:
    info = getattr(request, "delivery_info", None) or {}
    return info.get("routing_key") or info.get("queue")


def _header_of(request: Any) -> Any:
    """The propagated context a task's request carries (``None`` if none).

    Read from the request's ``__dict__`` when it has one: a ``getattr`` with a default
    raises and catches an ``AttributeError`` inside on every task without the header.
    """
    if type(request) is Context:  # its fields live in the instance __dict__
        return request.__dict__.get(HEADER)
    return getattr(request, HEADER, None)


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


#: Task fields left out where they repeat the task's id (``root_id`` of a root task; the
#: ``correlation_id`` Celery sets to the task id), unless ``always_fields`` names them.
_SAME_AS_ID = ("root_id", "correlation_id")


def _compile_fill(
    fields: list[tuple[str, str]], always: tuple[str, ...],
    worker_of: Callable[[Any, str], str] | None = None,
) -> Callable[[Any, Any, dict[str, Any]], None]:
    """A function that puts the chosen task fields (``(output name, field)``) into a dict.

    A field whose value is ``None`` is left out; so are, unless ``always`` (the
    ``always_fields`` option) names them, ``root_id`` and ``correlation_id`` equal to the
    task's id when the ``task_id`` is among the fields (it says the same), and
    ``retries`` of ``0``.

    Written once per config, like attrs writes ``__init__``: one inline attribute
    read per field, instead of a loop calling a getter per field on every task.
    ``worker_of(request, host)``: the ``worker`` of a request that names only the host
    (``celery.utils.nodenames.gethostname()``, Celery's fallback), see
    :meth:`TaskContext.worker_of`; one string comparison on every other task.
    """
    names = {name for _, name in fields}
    keep = set(always)
    same_as_id = {n for n in _SAME_AS_ID if n not in keep} if "task_id" in names else set()
    lines = ["def fill(task, req, values):"]
    if names & same_as_id:
        lines += ["    try:", "        own = req.id", "    except Exception:",
                  "        own = None"]
    for out, name in fields:
        condition = "v is not None"
        if name in same_as_id:
            condition += " and v != own"
        elif name == "retries" and "retries" not in keep:
            condition += " and v != 0"
        lines += [
            "    try:",
            f"        v = {_EXPRESSIONS[name]}",
        ]
        if name == "worker" and worker_of is not None:
            lines += [
                "        if v == _host:",
                "            v = _worker_of(req, v)",
            ]
        lines += [
            "    except Exception:",
            "        v = None",
            f"    if {condition}:",
            f"        values[{out!r}] = v",
        ]
    lines.append("    return None")
    namespace: dict[str, Any] = {"_queue_of": _queue_of, "_worker_of": worker_of,
                                 "_host": gethostname()}
    exec(compile("\n".join(lines), "<logkit task context>", "exec"), namespace)
    fill: Callable[[Any, Any, dict[str, Any]], None] = namespace["fill"]
    return fill


class TaskContext:
    """Builds the context bound for a task, with field choices and names decided once.

    ``workers``: the node names of the workers running in this process
    (:attr:`Installation.workers`), for the ``worker`` of a task whose request has only
    the host's name (:meth:`worker_of`).
    """

    def __init__(self, config: LogConfig, workers: list[str] | None = None) -> None:
        names = config.field_names
        self.config = config
        self.workers = workers if workers is not None else []
        self.worker_key = names.get("worker", "worker")
        #: ``fill(task, request, values)``: put the chosen task fields into ``values``.
        self.fill = _compile_fill([(names.get(n, n), n) for n in config.context_fields],
                                  config.always_fields, self.worker_of)
        #: ``(output name, field)`` of parent_id/root_id, if chosen (see :meth:`_fill_lineage`).
        self.lineage_keys = [(names.get(n, n), n) for n in ("parent_id", "root_id")
                             if n in config.context_fields]
        self._log_args = config.log_args
        #: Output names of the trace ids bound for a task (from its span when it starts).
        self.trace_keys = (names.get("trace_id", "trace_id"), names.get("span_id", "span_id"))
        #: The current OpenTelemetry span's ids (``None``: no ``opentelemetry-api``).
        self.trace = span_lookup()
        #: Output names of the task's own fields: never propagated to child tasks.
        self.task_keys = frozenset(
            names.get(n, n) for n in (*_EXPRESSIONS, "args", "kwargs", "trace_id", "span_id")
        )
        self.propagate_all = "*" in config.propagate
        self.propagate = frozenset(config.propagate) - {"*"}
        #: Web request keys sent only when named in ``propagate``.
        self.local_keys = frozenset(REQUEST_LOCAL_FIELDS) - self.propagate
        self.args_key = names.get("args", "args")
        self.structlog = config.structlog
        self.task_id_key = names.get("task_id", "task_id")
        self.kwargs_key = names.get("kwargs", "kwargs")
        self._last_propagated: tuple[Mapping[str, Any], dict[str, Any]] | None = None

    def for_task(self, task: Any, args: Any = None, kwargs: Any = None) -> dict[str, Any]:
        """The context to bind while ``task`` runs: propagated keys, then the task fields."""
        request = task.request
        values: dict[str, Any] = {}
        inherited = _header_of(request)
        if isinstance(inherited, Mapping):
            values.update(inherited)
        self.fill(task, request, values)
        if (_compat.APPLY_HAS_NO_LINEAGE and getattr(request, "is_eager", False)
                and getattr(request, "parent_id", 1) is None
                and getattr(request, "root_id", 1) is None):
            self._fill_lineage(values)  # fill() found neither
        if self.trace is not None:  # the task's span: its events carry it whatever the
            ids = self.trace()  # order of OpenTelemetry's task_postrun receiver and ours
            if ids is not None:
                values.update(self.trace_fields(ids))
        if self._log_args:
            keys, limit = self.config.redact_keys, self.config.args_max_length
            positional = redact_positional(task, args, keys)
            values[self.args_key] = cap(safe_repr(redact(positional, keys)), limit)
            values[self.kwargs_key] = cap(safe_repr(redact(dict(kwargs or {}), keys)), limit)
        return values

    def worker_of(self, request: Any, host: str) -> str:
        """The ``worker`` of a task whose request names only the host (``host``).

        Celery gives a task that one when its worker did not set up the fast tracer
        (``celery.contrib.testing.worker.start_worker``, the ``celery_worker`` fixture) and
        to every eager run, while the worker's own records and ``task_received`` name its
        node (``gen123@host``). One worker, one value: a task a worker runs gets the node
        name of the worker running in this process (when there is exactly one); an eager
        task gets its calling task's ``worker`` (it runs where its caller runs), or the host.
        """
        if getattr(request, "is_eager", False):
            caller = context.current().get(self.worker_key)
            return caller if isinstance(caller, str) else host
        workers = self.workers
        return workers[0] if len(workers) == 1 else host

    def _fill_lineage(self, values: dict[str, Any]) -> None:
        """The parent and root ids of an eagerly applied task, from its calling task."""
        if not self.lineage_keys:
            return
        ids = dict(zip(("parent_id", "root_id"), _compat.eager_lineage(), strict=True))
        for out, name in self.lineage_keys:
            if ids[name] is not None:
                values[out] = ids[name]

    def trace_fields(self, ids: Ids) -> dict[str, Any]:
        """``{trace_id: ..., span_id: ...}`` under their output names."""
        return {self.trace_keys[0]: ids[0], self.trace_keys[1]: ids[1]}

    def to_propagate(self, ctx: Mapping[str, Any]) -> dict[str, Any]:
        """The part of ``ctx`` that travels in a published task's headers (JSON-safe).

        Bound contexts are never mutated (see :mod:`logkit.context`), so the answer for
        the last one is kept: a loop publishing tasks under one context computes it once.
        """
        last = self._last_propagated
        if last is not None and last[0] is ctx:
            return dict(last[1])
        out = self._propagated(ctx)
        self._last_propagated = (ctx, out)
        return dict(out)

    def _propagated(self, ctx: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in ctx.items():
            if key in self.task_keys or key in self.local_keys or not isinstance(key, str):
                continue
            if self.propagate_all or key in self.propagate:
                out[key] = value if isinstance(value, _SIMPLE) else safe_repr(value)
        return out


#: ``task_started(installation, task_id, task)``: called right after a task's context is bound.
TaskStarted = Callable[["Installation", Any, Any], None]
#: ``task_finished(installation, task_id, task, retval, state)``: called right before the
#: task's context is restored.
TaskFinished = Callable[["Installation", Any, Any, Any, Any], None]
#: ``configured(installation, active, app)``: called once a process's logging is set up,
#: with what was set up (before it becomes :attr:`Installation.active`).
Configured = Callable[["Installation", Active, Any], None]
#: A per-task step (:attr:`Installation.prerun_hooks`), called with keyword arguments.
TaskHook = Callable[..., None]


def _run_hooks(hooks: tuple[TaskHook, ...], **kwargs: Any) -> None:
    """Call each per-task hook; one that raises is reported once, never breaks the task."""
    for hook in hooks:
        try:
            hook(**kwargs)
        except Exception:
            if hook not in _failed_hooks:
                _failed_hooks.add(hook)
                log_exception(logger, logging.WARNING, "logkit: per-task step %r failed", hook)


_failed_hooks: set[TaskHook] = set()


class Installation:
    """logkit installed on one Celery app: its options, its config once resolved, and the
    per-process state it owns.

    ``task_started``, ``task_finished`` (they must not raise) and ``configured`` are
    the steps :func:`logkit.install.install` plugs in (the lifecycle events).

    :attr:`changes` records every change made to the process on this installation's
    behalf (receivers connected, loggers' handlers and levels, ``Logger.makeRecord``,
    ``warnings.showwarning``, the redirected streams, structlog's configuration, queue
    writer threads, ``atexit`` callbacks), each with its undo: :func:`logkit.uninstall`
    runs them in reverse order.
    """

    def __init__(
        self,
        app: Any,
        options: Mapping[str, Any],
        *,
        task_started: TaskStarted | None = None,
        task_finished: TaskFinished | None = None,
        configured: Configured | None = None,
    ) -> None:
        self.app = app
        self.task_started = task_started
        self.task_finished = task_finished
        self.configured = configured
        self.options = check_options(options)
        self.cli: dict[str, Any] = {}
        self._config: LogConfig | None = None
        self._task_context: TaskContext | None = None
        self.redactor: RedactFilter | None = None
        self.event_nulls = False
        self.scope = context.TaskScope()
        #: structlog.contextvars as they were when a task started, by (task id, thread).
        self.structlog_snapshots: dict[tuple[str, int], dict[str, Any]] = {}
        #: What this installation changed in the process, each with its undo.
        self.changes = Changes()
        #: What the last configuration of this process's logging set up (``None``: none yet).
        self.active: Active | None = None
        #: Celery's loggers set to WARNING while events replace their INFO lines.
        self.quieted: set[str] = set()
        #: Python warnings held until logging is configured.
        self.warnings = WarningHold()
        #: Called first thing in ``task_prerun`` when set (prefork children: pick up a
        #: level changed by remote control, :mod:`logkit.control`).
        self.before_task: Callable[[], None] | None = None
        #: Per-task steps of the options that have them (``task_buffer``, ``dedupe_window``,
        #: ``task_sample``): called by logkit's own ``task_prerun`` receiver once the task's
        #: context is bound, before ``task_started`` (``hook(task_id=..., task=...)``), and
        #: by its ``task_postrun`` receiver once the context is restored
        #: (``hook(task_id=..., state=..., task=...)``). One receiver per signal for all of
        #: them: each receiver costs Celery's dispatch about as much as a short log call.
        self.prerun_hooks: tuple[TaskHook, ...] = ()
        self.postrun_hooks: tuple[TaskHook, ...] = ()
        #: Start time (``time.monotonic()``) and queue times (``queued_ms``, ``wait_ms``)
        #: of each task running in this process, by task id (the task events).
        self.running: dict[Any, tuple[float | None, Mapping[str, Any]]] = {}
        #: The same, of each task run eagerly whose exception was raised to its caller
        #: (``task_eager_propagates``, ``apply(throw=True)``: ``task_postrun`` came with no
        #: state), until the ``task_internal_error`` Celery sends for it next (at most 1,024).
        self.raised: dict[Any, tuple[float | None, Mapping[str, Any]]] = {}
        #: Node names of the workers started in this process (``worker_init``) and not shut
        #: down, inherited by pool children: the ``worker`` of the tasks they run. An
        #: installation that replaces this one takes them over (the workers still run).
        self.workers: list[str] = []
        #: ``task_sample`` in this process (:mod:`logkit.sample`): made when the process's
        #: logging is configured; its filters and steps are on only while it samples.
        self.sampler: Sampler | None = None

    @property
    def config(self) -> LogConfig:
        """The resolved config (kwargs, ``app.conf``, env, CLI); resolved once."""
        if self._config is None:
            self.use(LogConfig.resolve(self.app, self.options, cli=self.cli))
        assert self._config is not None
        return self._config

    def use(self, config: LogConfig) -> None:
        self._config = config
        self._task_context = TaskContext(config, self.workers)
        #: Redacts the fields of the records logkit builds itself (the lifecycle events),
        #: with the keys the handlers' filters use (``None``: no ``redact_keys``).
        self.redactor = RedactFilter(config.redact_keys) if config.redact_keys else None
        #: Write the lifecycle events' ``None`` fields (``always_fields`` names ``nulls``).
        self.event_nulls = "nulls" in config.always_fields

    @property
    def task_context(self) -> TaskContext:
        if self._task_context is None:
            _ = self.config
        assert self._task_context is not None
        return self._task_context

    def connect(self, signal: Any, receiver: Callable[..., Any], uid: str) -> None:
        """Connect ``receiver`` to ``signal`` (strongly, as ``uid``), recorded with its undo."""
        signal.connect(receiver, weak=False, dispatch_uid=uid)
        self.changes.add(
            f"receiver {uid}", lambda: signal.disconnect(receiver, dispatch_uid=uid),
            key=("receiver", uid),
        )

    def configure_process(self, config: LogConfig, **options: Any) -> Active:
        """:func:`logkit.setup.configure_process` on this installation's behalf: its
        changes recorded here, its :attr:`configured` step run with the new
        :class:`~logkit.setup.Active` (passed to it: :attr:`active` is still the previous
        one then), the result kept as :attr:`active`."""
        step = self.configured

        def configured(active: Active, app: Any) -> None:
            if step is not None:
                step(self, active, app)

        self.active = configure_process(
            config, changes=self.changes, previous=self.active, warnings_hold=self.warnings,
            configured=configured, **options,
        )
        return self.active


_installation: Installation | None = None


def installation() -> Installation | None:
    """The current installation (set by :func:`logkit.install`), or ``None``."""
    return _installation


def activate(inst: Installation | None) -> None:
    """Make ``inst`` the installation the receivers serve (``None``: no installation)."""
    global _installation
    _installation = inst


def _other_setup_logging_receivers() -> list[Any]:
    """The receivers of ``setup_logging`` other than logkit's (the app's own)."""
    return [r for r in _compat.live_receivers(signals.setup_logging) if r is not on_setup_logging]


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
    # stdout/stderr redirected exactly when Celery would for the call that sent the signal
    redirect, redirect_level = _compat.celery_redirect() or (False, None)
    try:
        inst.configure_process(
            inst.config, loglevel=loglevel, logfile=logfile, colorize=colorize, app=inst.app,
            redirect_stdouts=redirect, redirect_level=redirect_level,
        )
    except ConfigError as exc:
        # SystemExit passes through Celery's signal dispatch and stops the worker cleanly.
        # One JSON line when the format is JSON: the process's streams are JSON from the start.
        report_failure(
            str(exc), intended_format(inst.app, inst.options, inst.cli), inst.warnings
        )
        raise SystemExit(1) from exc


def on_task_prerun(task_id: str | None = None, task: Any = None, args: Any = None,
                   kwargs: Any = None, **_: Any) -> None:
    """``task_prerun``: bind the task's context for every record until ``task_postrun``."""
    inst = _installation
    if inst is None or task is None:
        return
    if inst.before_task is not None:
        inst.before_task()
    task_context = inst.task_context
    try:
        values = task_context.for_task(task, args, kwargs)
    except Exception as exc:  # never break a task because of logging
        values = {"task_id": task_id, "logkit_error": f"context unavailable: {exc!r}"}
    key = task_id or values.get("task_id", "")
    inst.scope.enter(key, values, task_context.task_keys)
    if task_context.structlog:  # what the task binds with structlog.contextvars ends with it too
        inst.structlog_snapshots[(key, threading.get_ident())] = contextvars_snapshot()
    if inst.prerun_hooks:  # before task_started: its event is the task's first record
        _run_hooks(inst.prerun_hooks, task_id=task_id, task=task)
    started = inst.task_started
    if started is not None:
        started(inst, task_id, task)


def on_task_postrun(task_id: str | None = None, task: Any = None, retval: Any = None,
                    state: Any = None, **_: Any) -> None:
    """``task_postrun``: restore the context that was there before the task."""
    inst = _installation
    if inst is None:
        return
    finished = inst.task_finished
    if finished is not None:
        finished(inst, task_id, task, retval, state)
    inst.scope.exit(task_id or "")
    if inst.structlog_snapshots:
        snapshot = inst.structlog_snapshots.pop((task_id or "", threading.get_ident()), None)
        if snapshot is not None:
            restore_contextvars(snapshot)
    if inst.postrun_hooks:
        _run_hooks(inst.postrun_hooks, task_id=task_id, state=state, task=task)


def _target(receiver: Any) -> Any:
    """The function a signal's receiver entry refers to (weak references resolved)."""
    return receiver() if isinstance(receiver, weakref.ReferenceType) else receiver


def order_after_tracing(**_: Any) -> None:
    """Move logkit's ``task_prerun`` receiver after OpenTelemetry's, if it is before it.

    OpenTelemetry's Celery instrumentation starts the task's span in its own
    ``task_prerun`` receiver, usually connected in ``worker_process_init``, after
    logkit's: then the context logkit binds (and ``task_started``) would have no span.
    Connected to ``worker_process_init`` and ``worker_ready`` by :func:`logkit.install`.
    """
    sig = signals.task_prerun
    try:
        targets = [_target(receiver) for _, receiver in sig.receivers]
        ours = targets.index(on_task_prerun)
    except (ValueError, Exception):
        return
    if any(getattr(t, "__module__", "").startswith("opentelemetry") for t in targets[ours:]):
        sig.disconnect(on_task_prerun, dispatch_uid="logkit.prerun")
        sig.connect(on_task_prerun, weak=False, dispatch_uid="logkit.prerun")


def on_worker_init(sender: Any = None, **_: Any) -> None:
    """``worker_init`` (after the app's modules connected their receivers): connect
    :func:`order_after_tracing` to ``worker_process_init`` after them; remember the
    worker's node name (:attr:`Installation.workers`)."""
    inst = _installation
    if inst is not None:
        inst.connect(signals.worker_process_init, order_after_tracing, "logkit.trace_order")
        hostname = getattr(sender, "hostname", None)
        if isinstance(hostname, str):
            inst.workers.append(hostname)


def on_worker_stopped(sender: Any = None, **_: Any) -> None:
    """``worker_shutdown``: forget the worker's node name (:attr:`Installation.workers`)."""
    inst = _installation
    hostname = getattr(sender, "hostname", None)
    if inst is not None and hostname in inst.workers:
        inst.workers.remove(hostname)


def on_before_task_publish(headers: Any = None, body: Any = None, **_: Any) -> None:
    """``before_task_publish``: put the propagated part of the context in the headers."""
    inst = _installation
    if inst is None or not isinstance(headers, dict):
        return
    headers[PUBLISHED] = time.time()  # queued_ms (logkit.events.queue)
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
        if not args and not kwargs:  # nothing to redact (and no registry lookup)
            return
        task = inst.app.tasks.get(headers.get("task"))
        amqp = inst.app.amqp
        if args and task is not None:
            positional = redact_positional(task, args, keys)
            if has_sensitive_key(args, keys) or any(
                a is not b for a, b in zip(positional, args, strict=False)
            ):
                clean = tuple(redact(positional, keys))
                headers["argsrepr"] = saferepr(clean, amqp.argsrepr_maxsize)
        if kwargs and has_sensitive_key(kwargs, keys):
            headers["kwargsrepr"] = saferepr(redact(kwargs, keys), amqp.kwargsrepr_maxsize)
    except Exception:  # never break a publish because of logging
        log_exception(logger, logging.DEBUG, "logkit: could not redact the argsrepr headers")
