"""Levels and sampling on running workers: the ``logkit_level`` / ``logkit_levels`` and
``logkit_sample`` remote control commands, :func:`set_level` and :func:`set_sample`.

Celery runs remote control commands in the worker's main process only. A level set
there is in force at once in that process (and so for the threads, gevent, eventlet
and solo pools, which run tasks in it). Prefork pool children read it from memory
shared with the main process::

    main process: logkit_level DEBUG 60
      -> set the levels here, write {logger: level} into the shared page, bump its
         generation (a seqlock: odd while writing)
    pool child, task_prerun: generation changed? -> read the page, set the levels
    pool child, worker_process_init (also those started by max_tasks_per_child):
      -> set the levels of the page

The per-task cost in a child is one read of a 64-bit counter and one comparison
(``Installation.before_task``). A ``TTL`` is kept by a timer thread of the main
process, which sets the level back and bumps the generation like any change.

``logkit_sample RATE [TTL]`` takes the same road: the rate of ``task_sample``
(:mod:`logkit.sample`) is set in the main process (its ``task_received`` decisions,
and the tasks of the threads, gevent, eventlet and solo pools) and written into the
same page, with the levels, for the prefork children.

Nothing here runs at import: :func:`register` (called by :func:`logkit.install`)
adds the three commands to Celery's global command registry (``Panel``) and connects
two receivers; :func:`unregister` takes all of it back.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any

from celery import signals
from celery.worker.control import control_command, inspect_command

from ._compat import remove_control_command
from ._safe import iso, log_exception
from .config import LEVEL_NAMES
from .events.base import _guarded
from .events.worker import log_level_changed, task_sample_changed
from .receivers import installation
from .sample import Sampler, in_sample

__all__ = [
    "CONTROL_COMMAND",
    "INSPECT_COMMAND",
    "SAMPLE_COMMAND",
    "LevelSwitch",
    "parse_level",
    "parse_rate",
    "parse_ttl",
    "register",
    "sampled",
    "set_level",
    "set_sample",
    "unregister",
]

#: ``celery control logkit_level LEVEL [TTL_SECONDS] [LOGGER]``.
CONTROL_COMMAND = "logkit_level"
#: ``celery inspect logkit_levels``.
INSPECT_COMMAND = "logkit_levels"
#: ``celery control logkit_sample RATE [TTL_SECONDS]``.
SAMPLE_COMMAND = "logkit_sample"
#: The name the root logger is given in commands and replies.
ROOT = "root"
#: The level the worker started with.
DEFAULT = "default"
#: Celery's task logger: ``-l`` sets it with the root logger, so a root change does too.
TASK_LOGGER = "celery.task"

_VALID = (*LEVEL_NAMES, DEFAULT)
_VALID_TEXT = ", ".join(repr(name) for name in _VALID)

#: Shared page: generation (8 bytes), payload length (4 bytes), JSON payload.
_HEADER = struct.Struct("=QI")
_PAGE_SIZE = 64 * 1024


def parse_level(value: Any) -> str:
    """``value`` as a level name (``DEBUG``...) or ``default``; ``ValueError`` naming the
    valid choices otherwise."""
    text = str(value).strip()
    if text.lower() == DEFAULT:
        return DEFAULT
    if text.upper() in LEVEL_NAMES:
        return text.upper()
    raise ValueError(f"level must be one of {_VALID_TEXT}; got {value!r}")


_RATE_CHOICES = "a number from 0 to 1 (1: every workflow written; 0: only the tasks " \
    "that go wrong) or 'default'"


def parse_rate(value: Any) -> float | str:
    """``value`` as a ``task_sample`` rate (a float from 0 to 1) or ``default``;
    ``ValueError`` naming the valid choices otherwise."""
    text = str(value).strip()
    if text.lower() == DEFAULT:
        return DEFAULT
    try:
        rate = float(text) if value is not None and not isinstance(value, bool) else None
    except ValueError:
        rate = None
    if rate is None or not (0.0 <= rate <= 1.0):  # NaN fails too
        raise ValueError(f"rate must be {_RATE_CHOICES}; got {value!r}")
    return rate


def parse_ttl(value: Any) -> float | None:
    """``value`` as seconds (``None`` for absent or 0); ``ValueError`` otherwise."""
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"ttl must be a number of seconds >= 0; got {value!r}") from None
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise ValueError(f"ttl must be a number of seconds >= 0; got {value!r}")
    return seconds or None


def _logger(name: str) -> logging.Logger:
    return logging.getLogger() if name == ROOT else logging.getLogger(name)


def _name_of(level: int) -> str:
    return logging.getLevelName(level)


class _SharedPage:
    """An anonymous shared mapping, inherited by the pool children forked after it."""

    def __init__(self) -> None:
        self.map = mmap.mmap(-1, _PAGE_SIZE)
        #: The generation, readable without a copy or a struct call.
        self.generation = memoryview(self.map)[:8].cast("Q")

    def write(self, state: Mapping[str, Any]) -> None:
        """Write ``state`` (one writer: the main process, under the switch's lock)."""
        payload = json.dumps(dict(state)).encode()
        if len(payload) > _PAGE_SIZE - _HEADER.size:
            raise ValueError("too many loggers with a changed level")
        start = self.generation[0]
        self.generation[0] = start + 1  # odd: being written
        self.map[_HEADER.size:_HEADER.size + len(payload)] = payload
        struct.pack_into("=I", self.map, 8, len(payload))
        self.generation[0] = start + 2

    def read(self) -> tuple[int, dict[str, Any]] | None:
        """``(generation, state)``, or ``None`` while the main process is writing."""
        before = self.generation[0]
        if before % 2:
            return None
        (length,) = struct.unpack_from("=I", self.map, 8)
        payload = bytes(self.map[_HEADER.size:_HEADER.size + length])
        if self.generation[0] != before:
            return None
        state = json.loads(payload) if length else {}
        return before, state

    def close(self) -> None:
        self.generation.release()
        self.map.close()


class LevelSwitch:
    """The levels (and the ``task_sample`` rate) changed by remote control in this
    worker, and their defaults.

    In the main process :meth:`change` sets a level and :meth:`change_sample` the rate
    (each with its revert timer); in a prefork child :meth:`sync` applies what the main
    process set.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Level of each changed logger before its first change (the ``default``).
        self.defaults: dict[str, int] = {}
        #: Logger name -> (level, expiry as a Unix time or ``None``) of the current changes.
        self.changes: dict[str, tuple[int, float | None]] = {}
        self._timers: dict[str, threading.Timer] = {}
        #: Each change's number, so a timer never reverts a later change.
        self._serial = 0
        self._tokens: dict[str, int] = {}
        self.page: _SharedPage | None = None
        #: The page generation whose levels this process has applied.
        self.seen = 0
        self.hostname: Any = None
        #: When the rate changed by ``logkit_sample`` ends (Unix time; ``None``: never, or
        #: no change), whether it was ever changed (then the page carries it), its timer.
        self.sample_until: float | None = None
        self.sample_changed = False
        self._sample_timer: threading.Timer | None = None
        self._sample_token = 0

    # -- main process ------------------------------------------------------

    def share(self) -> None:
        """Make the shared page, before the pool forks its children (``worker_init``)."""
        if self.page is None:
            self.page = _SharedPage()

    def change(
        self, level: str, ttl: float | None = None, logger: str | None = None,
        *, reason: str = "control",
    ) -> dict[str, Any]:
        """Set ``logger``'s (the root's) level; return what changed (the reply)."""
        name = logger or ROOT
        with self._lock:
            target = _logger(name)
            previous = target.level
            default = self.defaults.setdefault(name, previous)
            related = self._related(name)
            new = default if level == DEFAULT else logging.getLevelName(level)
            until = None if ttl is None or level == DEFAULT else time.time() + ttl
            self._serial += 1
            self._tokens[name] = self._serial
            timer = self._timers.pop(name, None)
            if timer is not None:
                timer.cancel()
            if until is None and new == default:
                self.changes.pop(name, None)
            else:
                self.changes[name] = (new, until)
            kept = ttl if until is not None else None
            event = (self.hostname, name, new, previous, kept, iso(until), reason)
            # logged while the more verbose of the two levels is in force
            if new < previous:
                self._apply({name: new, **{r: new for r in related}})
                log_level_changed(*event)
            else:
                log_level_changed(*event)
                self._apply({name: new, **{r: new for r in related}})
            self._publish()
            if until is not None and ttl is not None:
                timer = threading.Timer(ttl, self._expire, args=(name, self._serial))
                timer.daemon = True
                timer.name = f"logkit level revert ({name})"
                self._timers[name] = timer
                timer.start()
        return {
            "logger": name, "level": _name_of(new), "previous": _name_of(previous),
            "default": _name_of(default), "ttl": kept, "until": iso(until),
        }

    def _related(self, name: str) -> list[str]:
        """Loggers set with ``name``: the root takes Celery's task logger with it when
        the two had the same level (``-l`` sets both)."""
        if name != ROOT:
            return []
        task_logger = logging.getLogger(TASK_LOGGER)
        self.defaults.setdefault(TASK_LOGGER, task_logger.level)
        if self.defaults[TASK_LOGGER] == self.defaults[ROOT]:
            return [TASK_LOGGER]
        return []

    def _apply(self, levels: Mapping[str, int]) -> None:
        for name, level in levels.items():
            _logger(name).setLevel(level)

    def _publish(self) -> None:
        """Write the level of every logger ever changed, and the rate once changed, into
        the shared page."""
        if self.page is None:
            return
        state: dict[str, Any] = {"levels": {name: _logger(name).level for name in self.defaults}}
        sampler = _sampler()
        if self.sample_changed and sampler is not None:
            state["task_sample"] = sampler.rate
        self.page.write(state)
        self.seen = self.page.generation[0]

    def change_sample(
        self, rate: float | str, ttl: float | None = None, *, reason: str = "control",
    ) -> dict[str, Any]:
        """Set the ``task_sample`` rate (``default``: the configured one); return what
        changed (the reply)."""
        with self._lock:
            sampler = _sampler()
            if sampler is None:
                raise RuntimeError("logging is not configured in this worker")
            previous, default = sampler.rate, sampler.default
            new = default if rate == DEFAULT else float(rate)
            until = None if ttl is None or rate == DEFAULT else time.time() + ttl
            self._serial += 1
            self._sample_token = self._serial
            if self._sample_timer is not None:
                self._sample_timer.cancel()
                self._sample_timer = None
            sampler.set_rate(new)
            self.sample_until = until
            self.sample_changed = True
            kept = ttl if until is not None else None
            task_sample_changed(self.hostname, new, previous, kept, iso(until), reason)
            self._publish()
            if until is not None and ttl is not None:
                timer = threading.Timer(ttl, self._expire_sample, args=(self._serial,))
                timer.daemon = True
                timer.name = "logkit task_sample revert"
                self._sample_timer = timer
                timer.start()
        return {"task_sample": new, "previous": previous, "default": default, "ttl": kept,
                "until": iso(until)}

    def _expire_sample(self, token: int) -> None:
        try:
            if self._sample_token == token:
                self.change_sample(DEFAULT, None, reason="expired")
        except Exception:  # a timer thread must not die noisily
            log_exception(logging.getLogger("logkit"), logging.WARNING,
                          "logkit: could not set the task_sample rate back")

    def _expire(self, name: str, token: int) -> None:
        try:
            if self._tokens.get(name) == token:
                self.change(DEFAULT, None, name, reason="expired")
        except Exception:  # a timer thread must not die noisily
            log_exception(logging.getLogger("logkit"), logging.WARNING,
                          "logkit: could not revert the level of %s", name)

    def levels(self) -> dict[str, Any]:
        """The ``logkit_levels`` reply: each logger's level, default and expiry."""
        with self._lock:
            names = [ROOT, *(n for n in self.defaults if n != ROOT)]
            out: dict[str, Any] = {}
            for name in names:
                level = _logger(name).level
                default = self.defaults.get(name, level)
                until = self.changes.get(name, (level, None))[1]
                out[name] = {
                    "level": _name_of(level), "default": _name_of(default), "until": iso(until),
                }
            reply: dict[str, Any] = {"loggers": out, "pid": os.getpid()}
            sampler = _sampler()
            if sampler is not None:
                reply["task_sample"] = {"rate": sampler.rate, "default": sampler.default,
                                        "until": iso(self.sample_until)}
        return reply

    def stop(self) -> None:
        """Cancel the revert timers (the levels set stay)."""
        with self._lock:
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()
            self._tokens.clear()
            if self._sample_timer is not None:
                self._sample_timer.cancel()
                self._sample_timer = None
            self._sample_token = 0

    # -- pool child --------------------------------------------------------

    def sync(self) -> None:
        """Apply the main process's levels if they changed since the last call.

        Called before each task in a prefork child: one counter read when nothing changed.
        """
        page = self.page
        if page is None or page.generation[0] == self.seen:
            return
        read = page.read()
        if read is None:  # being written: the next task sees it
            return
        self.seen, state = read
        self._apply(state.get("levels", {}))
        rate = state.get("task_sample")
        sampler = _sampler()
        if rate is not None and sampler is not None and rate != sampler.rate:
            sampler.set_rate(rate)


def _sampler() -> Sampler | None:
    """The installation's sampler in this process (``None`` before logging is set up)."""
    inst = installation()
    return inst.sampler if inst is not None else None


_switch: LevelSwitch | None = None


def switch() -> LevelSwitch | None:
    """The level switch :func:`register` made, or ``None``."""
    return _switch


# ---------------------------------------------------------------------------
# Remote control commands (registered in Celery's Panel by register())
# ---------------------------------------------------------------------------


def _logkit_level(
    state: Any, level: Any = None, ttl: Any = None, logger: Any = None, **_: Any
) -> dict[str, Any]:
    """Set the log level (root or LOGGER) for a while (TTL_SECONDS; 0 = until changed)."""
    current = _switch
    if current is None:
        return {"error": "logkit is not installed in this worker"}
    try:
        name = parse_level(level)
        seconds = parse_ttl(ttl)
    except ValueError as exc:
        return {"error": str(exc)}
    if current.hostname is None:
        current.hostname = getattr(state, "hostname", None)
    try:
        return {"ok": current.change(name, seconds, str(logger) if logger else None)}
    except Exception as exc:  # the worker goes on
        return {"error": f"could not set the level: {exc!r}"}


def _logkit_sample(state: Any, rate: Any = None, ttl: Any = None, **_: Any) -> dict[str, Any]:
    """Set the share of workflows whose lines are written (task_sample) for a while."""
    current = _switch
    if current is None:
        return {"error": "logkit is not installed in this worker"}
    try:
        value = parse_rate(rate)
        seconds = parse_ttl(ttl)
    except ValueError as exc:
        return {"error": str(exc)}
    if current.hostname is None:
        current.hostname = getattr(state, "hostname", None)
    try:
        return {"ok": current.change_sample(value, seconds)}
    except Exception as exc:  # the worker goes on
        return {"error": f"could not set the sample rate: {exc!r}"}


def _logkit_levels(state: Any, **_: Any) -> dict[str, Any]:
    """Current log levels, their defaults and when a change expires."""
    current = _switch
    if current is None:
        return {"error": "logkit is not installed in this worker"}
    return current.levels()


@_guarded
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    """``worker_init`` (main process, before the pool starts): make the shared page."""
    current = _switch
    if current is not None:
        current.hostname = getattr(sender, "hostname", None)
        current.share()


@_guarded
def _on_worker_process_init(**_: Any) -> None:
    """``worker_process_init`` (prefork child): apply the current levels; check them
    before each task."""
    current = _switch
    inst = installation()
    if current is None or current.page is None or inst is None:
        return
    current.seen = -1  # whatever the fork copied: apply the page's levels now
    current.sync()
    inst.before_task = current.sync


def register() -> LevelSwitch:
    """Add ``logkit_level``, ``logkit_levels`` and ``logkit_sample`` to Celery's remote
    control commands; return the :class:`LevelSwitch` they drive. Undone by
    :func:`unregister`."""
    global _switch
    if _switch is None:
        _switch = LevelSwitch()
    control_command(
        name=CONTROL_COMMAND,
        args=[("level", str), ("ttl", str), ("logger", str)],
        signature="LEVEL [TTL_SECONDS] [LOGGER]",
        help="Set the log level (root or LOGGER) for a while (TTL_SECONDS; 0 = until changed)",
    )(_logkit_level)
    inspect_command(
        name=INSPECT_COMMAND,
        help="Current log levels, their defaults and when a change expires",
    )(_logkit_levels)
    control_command(
        name=SAMPLE_COMMAND,
        args=[("rate", str), ("ttl", str)],
        signature="RATE [TTL_SECONDS]",
        help="Set the share of workflows whose lines are written (0 to 1, or default) "
        "for a while (TTL_SECONDS; 0 = until changed)",
    )(_logkit_sample)
    signals.worker_init.connect(_on_worker_init, weak=False, dispatch_uid="logkit.levels.init")
    signals.worker_process_init.connect(
        _on_worker_process_init, weak=False, dispatch_uid="logkit.levels.child"
    )
    return _switch


def unregister() -> None:
    """Remove the commands and receivers :func:`register` added; cancel revert timers."""
    global _switch
    remove_control_command(CONTROL_COMMAND, _logkit_level)
    remove_control_command(INSPECT_COMMAND, _logkit_levels)
    remove_control_command(SAMPLE_COMMAND, _logkit_sample)
    signals.worker_init.disconnect(_on_worker_init, dispatch_uid="logkit.levels.init")
    signals.worker_process_init.disconnect(
        _on_worker_process_init, dispatch_uid="logkit.levels.child"
    )
    inst = installation()
    if _switch is not None:
        if inst is not None and inst.before_task == _switch.sync:
            inst.before_task = None
        _switch.stop()
        if _switch.page is not None:
            _switch.page.close()
        _switch = None


# ---------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------


def set_level(
    app: Any,
    level: str,
    ttl: float | None = None,
    logger: str | None = None,
    destination: list[str] | None = None,
    *,
    timeout: float = 1.0,
) -> list[dict[str, Any]]:
    """Set the log level of running workers over Celery's remote control.

    The same as ``celery -A proj control logkit_level LEVEL [TTL_SECONDS] [LOGGER]``: in
    force at once in each worker's main process, and in each prefork pool child before
    its next task; every change and revert is a ``log_level_changed`` event.

    Args:
        app: The Celery app (its broker reaches the workers).
        level: ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``, ``CRITICAL`` or ``default``
            (the level each worker started with).
        ttl: Seconds until the level reverts by itself; ``None`` or 0: until changed.
        logger: A logger's name; ``None``: the root logger (with ``celery.task``).
        destination: Node names (``["celery@host1"]``); ``None``: every worker.
        timeout: Seconds to wait for the replies.

    Returns:
        One reply per node that answered: ``{node: {"ok": {...}}}`` with ``logger``,
        ``level``, ``previous``, ``default``, ``ttl`` and ``until``, or
        ``{node: {"error": ...}}``.

    Raises:
        ValueError: ``level`` or ``ttl`` is invalid (checked before anything is sent; the
            message names the valid levels).
    """
    parse_level(level)
    parse_ttl(ttl)
    arguments: dict[str, Any] = {"level": str(level)}
    if ttl:
        arguments["ttl"] = str(ttl)
    if logger:
        arguments["logger"] = logger
    replies: list[dict[str, Any]] = app.control.broadcast(
        CONTROL_COMMAND, arguments=arguments, destination=destination, reply=True,
        timeout=timeout,
    )
    return replies


def set_sample(
    app: Any,
    rate: float | str,
    ttl: float | None = None,
    destination: list[str] | None = None,
    *,
    timeout: float = 1.0,
) -> list[dict[str, Any]]:
    """Set the ``task_sample`` rate of running workers over Celery's remote control.

    The same as ``celery -A proj control logkit_sample RATE [TTL_SECONDS]``: in force at
    once in each worker's main process, and in each prefork pool child before its next
    task; every change and revert is a ``task_sample_changed`` event.

    Args:
        app: The Celery app (its broker reaches the workers).
        rate: From 0 to 1 (``1.0``: every workflow written, e.g. for a debugging
            window), or ``"default"`` (the rate each worker started with).
        ttl: Seconds until the rate reverts by itself; ``None`` or 0: until changed.
        destination: Node names (``["celery@host1"]``); ``None``: every worker.
        timeout: Seconds to wait for the replies.

    Returns:
        One reply per node that answered: ``{node: {"ok": {...}}}`` with
        ``task_sample``, ``previous``, ``default``, ``ttl`` and ``until``, or
        ``{node: {"error": ...}}``.

    Raises:
        ValueError: ``rate`` or ``ttl`` is invalid (checked before anything is sent; the
            message names the valid values).
    """
    parse_rate(rate)
    parse_ttl(ttl)
    arguments: dict[str, Any] = {"rate": str(rate)}
    if ttl:
        arguments["ttl"] = str(ttl)
    replies: list[dict[str, Any]] = app.control.broadcast(
        SAMPLE_COMMAND, arguments=arguments, destination=destination, reply=True,
        timeout=timeout,
    )
    return replies


def sampled(root_id: Any, rate: float | None = None) -> bool:
    """Whether the workflow ``root_id`` is in the sample: its lines are all written.

    The decision every worker makes for the tasks of that workflow (``task_sample``),
    made here without asking them: a publisher or a web request that knows a workflow's
    root id (the id of its first task) knows whether its lines will be in the log. The
    first 8 bytes of the BLAKE2b digest of the id (UTF-8), big-endian, over 2**64, below
    ``rate``.

    Args:
        root_id: The workflow's ``root_id`` (a task that no other task sent: its own id).
        rate: From 0 to 1; ``None``: this process's rate (its ``task_sample``, as changed
            by ``logkit_sample`` in a worker), or 1 without logkit installed.

    Returns:
        ``True`` if the workflow's lines are all written; ``False`` if only the tasks
        of it that go wrong write theirs.

    Raises:
        ValueError: ``rate`` is not a number from 0 to 1.
    """
    if rate is None:
        sampler = _sampler()
        if sampler is not None:
            rate = sampler.rate
        else:
            inst = installation()
            rate = inst.config.task_sample if inst is not None else 1.0
    else:
        try:
            number = float(rate) if not isinstance(rate, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or not (0.0 <= number <= 1.0):
            raise ValueError(f"rate must be a number from 0 to 1; got {rate!r}")
        rate = number
    return in_sample(root_id, float(rate))
