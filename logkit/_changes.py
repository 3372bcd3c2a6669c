"""A record of what logkit changed in the process, each change with its undo.

An :class:`~logkit.receivers.Installation` owns one :class:`Changes`. Everything
:func:`logkit.install` and :func:`logkit.configure` change outside logkit's own
objects (a Celery receiver connected, a logger's handlers and level, ``Logger.makeRecord``,
``warnings.showwarning``, ``sys.stdout``/``sys.stderr``, structlog's configuration, a
queue writer thread, an ``atexit`` callback) is recorded here with the call that puts it
back; :func:`logkit.uninstall` runs those calls in reverse order, as OpenTelemetry's
``BaseInstrumentor.uninstrument`` unwraps what ``instrument`` wrapped.

Recording happens at install/configure time only: nothing here is on a per-record or
per-task path.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["Changes"]


class Changes:
    """Changes made to the process, each with its undo, undone last first.

    A change recorded with a ``key`` is recorded once: configuring again does not stack
    a second undo for the same thing, and the undo puts back the state from before the
    *first* change (what was there before logkit).
    """

    def __init__(self) -> None:
        self._undos: list[tuple[str, Callable[[], object]]] = []
        self._keys: dict[Hashable, Any] = {}

    def add(
        self, what: str, undo: Callable[[], object], *, key: Hashable = None, data: Any = None
    ) -> bool:
        """Record ``undo`` for a change described by ``what``; ``False`` if ``key`` was
        recorded already (then nothing is recorded). ``data`` is kept for :meth:`data`."""
        if key is not None:
            if key in self._keys:
                return False
            self._keys[key] = data
        self._undos.append((what, undo))
        return True

    def __contains__(self, key: Hashable) -> bool:
        return key in self._keys

    def data(self, key: Hashable) -> Any:
        """The ``data`` recorded with ``key`` (``None`` if none)."""
        return self._keys.get(key)

    def __len__(self) -> int:
        return len(self._undos)

    def describe(self) -> list[str]:
        """What was changed, in the order it was changed."""
        return [what for what, _ in self._undos]

    def undo(self) -> list[tuple[str, BaseException]]:
        """Undo every change, last first; return the ``(what, exception)`` of undos that
        raised (the others still ran). Afterwards nothing is recorded."""
        failures: list[tuple[str, BaseException]] = []
        while self._undos:
            what, undo = self._undos.pop()
            try:
                undo()
            except Exception as exc:
                failures.append((what, exc))
        self._keys.clear()
        return failures
