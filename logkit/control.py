"""Levels on running workers: the ``logkit_level`` / ``logkit_levels`` remote control
commands and :func:`set_level`.

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

Nothing here runs at import: :func:`register` (called by :func:`logkit.install`)
adds the two commands to Celery's global command registry (``Panel``) and connects
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
from ._safe import iso
from .config import LEVEL_NAMES
from .events.base import _guarded
from .events.worker import log_level_changed
from .receivers import installation

__all__ = [
    "CONTROL_COMMAND",
    "INSPECT_COMMAND",
    "LevelSwitch",
    "parse_level",
    "parse_ttl",
    "register",
    "set_level",
    "unregister",
]

#: ``celery control logkit_level LEVEL [TTL_SECONDS] [LOGGER]``.
CONTROL_COMMAND = "logkit_level"
#: ``celery inspect logkit_levels``.
INSPECT_COMMAND = "logkit_levels"
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

    def write(self, levels: Mapping[str, int]) -> None:
        """Write ``levels`` (one writer: the main process, under the switch's lock)."""
        payload = json.dumps(dict(levels)).encode()
        if len(payload) > _PAGE_SIZE - _HEADER.size:
            raise ValueError("too many loggers with a changed level")
        start = self.generation[0]
        self.generation[0] = start + 1  # odd: being written
        self.map[_HEADER.size:_HEADER.size + len(payload)] = payload
        struct.pack_into("=I", self.map, 8, len(payload))
        self.generation[0] = start + 2

    def read(self) -> tuple[int, dict[str, int]] | None:
        """``(generation, levels)``, or ``None`` while the main process is writing."""
        before = self.generation[0]
        if before % 2:
            return None
        (length,) = struct.unpack_from("=I", self.map, 8)
        payload = bytes(self.map[_HEADER.size:_HEADER.size + length])
        if self.generation[0] != before:
            return None
        levels = json.loads(payload) if length else {}
        return before, levels

    def close(self) -> None:
        self.generation.release()
        self.map.close()


class LevelSwitch:
    """The levels changed by remote control in this worker, and their defaults.

    In the main process :meth:`change` sets a level (and its revert timer); in a
    prefork child :meth:`sync` applies what the main process set.
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
        """Write the level of every logger ever changed into the shared page."""
        if self.page is None:
            return
        levels = {name: _logger(name).level for name in self.defaults}
        self.page.write(levels)
        self.seen = self.page.generation[0]

    def _expire(self, name: str, token: int) -> None:
        try:
            if self._tokens.get(name) == token:
                self.change(DEFAULT, None, name, reason="expired")
        except Exception:  # a timer thread must not die noisily
            logging.getLogger("logkit").warning(
                "logkit: could not revert the level of %s", name, exc_info=True
            )

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
        return {"loggers": out, "pid": os.getpid()}

    def stop(self) -> None:
        """Cancel the revert timers (the levels set stay)."""
        with self._lock:
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()
            self._tokens.clear()

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
        self.seen, levels = read
        self._apply(levels)


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
    """Add ``logkit_level`` and ``logkit_levels`` to Celery's remote control commands;
    return the :class:`LevelSwitch` they drive. Undone by :func:`unregister`."""
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
