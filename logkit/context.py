"""Log context in one :class:`contextvars.ContextVar`.

The variable holds a plain ``dict`` that is **never mutated**: binding builds a
new dict and sets it. So a formatter (or a queue handler) can keep a reference to
the current dict without copying it, and every thread, greenlet and asyncio task
sees only its own context.

Task context is bound by the ``task_prerun`` receiver and restored by
``task_postrun`` (see :mod:`logkit.receivers`), with a token stack so that eager
tasks calling eager tasks get their caller's context back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

__all__ = ["bind", "bound", "clear", "get_context", "unbind"]

_EMPTY: dict[str, Any] = {}
_CTX: ContextVar[dict[str, Any]] = ContextVar("logkit_context", default=_EMPTY)

#: Fast accessor used on the hot path by formatters and handlers.
current = _CTX.get


def bind(**values: Any) -> None:
    """Bind ``values`` to the current context: every later record carries them.

    The context belongs to the current thread, greenlet or asyncio task. Inside a task
    it is the task's context: it is restored when the task ends, so nothing bound here
    leaks into the next task. Keys already bound are replaced.

    Args:
        **values: Fields to add, e.g. ``bind(user_id=42, tenant="acme")``.
    """
    _CTX.set({**_CTX.get(), **values})


def unbind(*keys: str) -> None:
    """Remove ``keys`` from the current context.

    Args:
        *keys: Names of bound fields; a name that is not bound is ignored.
    """
    ctx = _CTX.get()
    if any(key in ctx for key in keys):
        _CTX.set({k: v for k, v in ctx.items() if k not in keys})


def clear() -> None:
    """Remove everything from the current context (task fields included)."""
    _CTX.set(_EMPTY)


def get_context() -> dict[str, Any]:
    """Return the current context.

    Returns:
        A copy of the bound fields (task context and your own keys): changing it
            changes nothing.
    """
    return dict(_CTX.get())


@contextmanager
def bound(**values: Any) -> Iterator[dict[str, Any]]:
    """Bind ``values`` inside a ``with`` block; the previous context comes back after it.

    ```python
    with logkit.bound(request_id="r-42"):
        log.info("charging")         # carries request_id
        charge.delay(order_id)       # so do the task's records (see `propagate`)
    ```

    Args:
        **values: Fields to add for the duration of the block.

    Yields:
        The context inside the block (a dict: do not change it).
    """
    token = _CTX.set({**_CTX.get(), **values})
    try:
        yield _CTX.get()
    finally:
        try:
            _CTX.reset(token)
        except ValueError:  # reset from another context: fall back to restoring the old value
            _CTX.set(token.old_value if token.old_value is not Token.MISSING else _EMPTY)


def call_bound(values: Mapping[str, Any], fn: Callable[[Any], Any], arg: Any) -> Any:
    """``fn(arg)`` with ``values`` bound: what ``with bound(**values): fn(arg)`` does,
    without a generator-based context manager (an event's one record in the worker's
    main process, once per task)."""
    token = _CTX.set({**_CTX.get(), **values})
    try:
        return fn(arg)
    finally:
        try:
            _CTX.reset(token)
        except ValueError:  # reset from another context: fall back to restoring the old value
            _CTX.set(token.old_value if token.old_value is not Token.MISSING else _EMPTY)


class TaskScope:
    """Bind a task's context and restore what was there before, keyed by task id.

    A dict keyed by task id (not a stack) copes with pools where prerun and postrun
    of different tasks interleave in one process (threads, gevent, eventlet). The key
    includes the thread (greenlet, once gevent/eventlet patched ``threading``), so a
    redelivered message running while the first delivery still runs gets its own entry.
    """

    __slots__ = ("_tokens",)

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, int], tuple[Token[dict[str, Any]], dict[str, Any]]] = {}

    def enter(
        self, task_id: str, values: Mapping[str, Any], replace: frozenset[str] = frozenset()
    ) -> None:
        """Bind ``values``; keys in ``replace`` left over from an outer task are dropped."""
        previous = _CTX.get()
        if replace and not replace.isdisjoint(previous):
            base = {k: v for k, v in previous.items() if k not in replace}
        else:
            base = previous
        token = _CTX.set({**base, **values})
        self._tokens[(task_id, threading.get_ident())] = (token, previous)

    def exit(self, task_id: str) -> None:
        entry = self._tokens.pop((task_id, threading.get_ident()), None)
        if entry is None:
            return
        token, previous = entry
        try:
            _CTX.reset(token)
        except ValueError:
            _CTX.set(previous)

    def __len__(self) -> int:
        return len(self._tokens)
