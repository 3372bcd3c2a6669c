"""The clock: a record's ``created`` time as ISO 8601 text, cheaply.

Imports nothing from logkit.
"""

from __future__ import annotations

import time

__all__ = ["Clock"]


class Clock:
    """Formats ``record.created`` as ISO 8601 with milliseconds, one ``strftime`` per second.

    The milliseconds come from a table of the 1000 possible suffixes, so a record in an
    already seen second costs one ``int()``, one lookup and one concatenation.
    """

    __slots__ = ("_cache", "_convert", "_ms", "_sep", "_suffix")

    def __init__(self, *, utc: bool = True, sep: str = "T") -> None:
        self._convert = time.gmtime if utc else time.localtime
        self._suffix = "Z" if utc else ""
        self._sep = sep
        self._cache: tuple[int, str] = (-1, "")
        self._ms: tuple[str, ...] = tuple(f".{ms:03d}{self._suffix}" for ms in range(1000))

    def __call__(self, created: float, msecs: float) -> str:
        sec = int(created)
        cached = self._cache
        if cached[0] != sec:
            cached = (sec, time.strftime(f"%Y-%m-%d{self._sep}%H:%M:%S", self._convert(sec)))
            self._cache = cached
        ms = int(msecs)
        if 0 <= ms < 1000:
            return cached[1] + self._ms[ms]
        return f"{cached[1]}.{ms:03d}{self._suffix}"
