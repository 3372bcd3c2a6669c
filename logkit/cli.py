"""The ``logkit`` / ``python -m logkit`` command.

(The ``celery worker --log-format ...`` options are in :mod:`logkit.celery_options`.)

* ``logkit demo`` runs a real worker and shows its logs (see :mod:`logkit.demo`).
* ``logkit view FILE...`` merges JSON log files by time and prints them as console
  lines, with filters, so one workflow can be read across several workers' files.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gzip
import heapq
import io
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import click
import orjson

from ._safe import clean, safe_str
from .config import LEVEL_NAMES, LogConfig
from .formatters import ConsoleFormatter

__all__ = ["main", "render", "view_lines"]


# ---------------------------------------------------------------------------
# logkit view: read JSON lines, merge by time, filter, render
# ---------------------------------------------------------------------------

_TIME_KEYS = ("timestamp", "@timestamp", "time", "ts", "asctime", "created")
_LEVEL_KEYS = ("level", "levelname", "severity")
_LOGGER_KEYS = ("logger", "name", "logger_name")
_MESSAGE_KEYS = ("message", "msg")
_HIDDEN = frozenset({"process", "thread", "exception", "stack"})
#: Records held back to put lines that arrived slightly out of order back in order.
SORT_WINDOW = 5000


def _epoch(value: Any) -> float | None:
    """Seconds since the epoch for an ISO 8601 string (or a number), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace(",", ".")).timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def _first(record: Mapping[str, Any], keys: Sequence[str]) -> tuple[str | None, Any]:
    for key in keys:
        if key in record:
            return key, record[key]
    return None, None


@dataclass
class Entry:
    """One input line: a parsed JSON object (``record``) or raw text (``record is None``)."""

    time: float
    source: int
    seq: int
    label: str
    record: dict[str, Any] | None
    text: str

    def sort_key(self) -> tuple[float, int, int]:
        return (self.time, self.source, self.seq)


class _Source:
    """One input (a file, a ``.gz`` file or stdin) read line by line."""

    def __init__(self, name: str, index: int, label: str) -> None:
        self.name = name
        self.index = index
        self.label = label
        self.seq = 0
        self.last_time = float("-inf")
        self.pending = b""
        self.inode: int | None = None
        self.fh: IO[bytes] = self._open()

    def _open(self) -> IO[bytes]:
        if self.name == "-":
            return sys.stdin.buffer
        fh: IO[bytes]
        if self.name.endswith(".gz"):
            fh = gzip.open(self.name, "rb")  # type: ignore[assignment]  # noqa: SIM115
        else:
            fh = open(self.name, "rb")  # noqa: SIM115 - closed by close()
            self.inode = os.fstat(fh.fileno()).st_ino
        return fh

    @property
    def followable(self) -> bool:
        return self.name != "-" and not self.name.endswith(".gz")

    def entry(self, raw: bytes) -> Entry:
        """Parse one line; a line that is not a JSON object is kept as text."""
        self.seq += 1
        text = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        record: dict[str, Any] | None
        try:
            parsed = orjson.loads(text)
            record = parsed if isinstance(parsed, dict) else None
        except orjson.JSONDecodeError:
            record = None
        if record is not None:
            when = _epoch(_first(record, _TIME_KEYS)[1])
            if when is not None:
                self.last_time = when
        # Lines without a usable time keep their place after the previous line.
        return Entry(self.last_time, self.index, self.seq, self.label, record, text)

    def entries(self, follow: bool = False) -> Iterator[Entry]:
        """Every line from the current position to EOF (streamed, not loaded)."""
        for raw in self.fh:
            if follow and not raw.endswith(b"\n"):
                self.pending = raw  # a line still being written
                return
            if raw.strip():
                yield self.entry(raw)

    def poll(self) -> list[Entry]:
        """Complete lines appended since the last call (follow mode); reopen if rotated."""
        try:
            st = os.stat(self.name)
        except OSError:
            return []
        data = b""
        if st.st_ino != self.inode or st.st_size < self.fh.tell():
            if st.st_ino != self.inode:  # rotated: finish the old file first
                data = self.pending + self.fh.read()
                if data and not data.endswith(b"\n"):
                    data += b"\n"
            self.fh.close()
            self.fh = self._open()
            self.pending = b""
        data += self.pending + self.fh.read()
        lines = data.split(b"\n")
        self.pending = lines.pop()
        return [self.entry(line) for line in lines if line.strip()]

    def close(self) -> None:
        if self.fh is not sys.stdin.buffer:
            self.fh.close()


def _windowed(entries: Iterable[Entry], window: int) -> Iterator[Entry]:
    """Sort ``entries`` that are out of order by fewer than ``window`` positions."""
    heap: list[tuple[tuple[float, int, int], Entry]] = []
    for entry in entries:
        heapq.heappush(heap, (entry.sort_key(), entry))
        if len(heap) > window:
            yield heapq.heappop(heap)[1]
    while heap:
        yield heapq.heappop(heap)[1]


def merged(sources: Sequence[_Source], *, follow: bool = False) -> Iterator[Entry]:
    """All sources' lines in time order: a k-way merge of the streams."""
    streams = [s.entries(follow) for s in sources]
    return _windowed(heapq.merge(*streams, key=Entry.sort_key), SORT_WINDOW)


@dataclass(frozen=True)
class Filters:
    """Which records ``view`` prints; several values for one filter mean "any of"."""

    tasks: tuple[str, ...] = ()
    roots: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    level: int = 0
    #: ``(key, value)`` pairs: the record's ``key`` equals ``value`` (``--field``, ``--request``).
    fields: tuple[tuple[str, str], ...] = ()
    traces: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return bool(
            self.tasks or self.roots or self.events or self.level or self.fields or self.traces
        )

    def match(self, record: Mapping[str, Any]) -> bool:
        """True if ``record`` passes every filter (ids match by prefix)."""
        if self.tasks and not _id_matches(record.get("task_id"), self.tasks):
            return False
        if self.roots and not (
            _id_matches(record.get("root_id"), self.roots)
            or _id_matches(record.get("task_id"), self.roots)
        ):
            return False
        if self.events:
            event = record.get("event")
            if not isinstance(event, str) or not any(
                fnmatch.fnmatchcase(event, pattern) for pattern in self.events
            ):
                return False
        if self.traces and not _trace_matches(record, self.traces):
            return False
        if self.level:
            levelno = _levelno(_first(record, _LEVEL_KEYS)[1])
            if levelno is not None and levelno < self.level:
                return False
        return not self.fields or _fields_match(record, self.fields)


def _fields_match(record: Mapping[str, Any], wanted: Sequence[tuple[str, str]]) -> bool:
    """Every key given matches one of its values (several values of one key: any of them)."""
    keys = {key for key, _ in wanted}
    for key in keys:
        value = record.get(key)
        if isinstance(value, bool) or value is None:
            text = {True: "true", False: "false", None: "null"}[value]
        else:
            text = value if isinstance(value, str) else str(value)
        if not any(text == v for k, v in wanted if k == key):
            return False
    return True


def _trace_matches(record: Mapping[str, Any], wanted: Sequence[str]) -> bool:
    """The record's trace id (any schema's key and format) is one of ``wanted`` (hex)."""
    nested = record.get("trace")
    value = (record.get("trace_id") or record.get("dd.trace_id")
             or (nested.get("id") if isinstance(nested, Mapping) else None)
             or record.get("logging.googleapis.com/trace"))
    if not isinstance(value, str):
        return False
    value = value.rpartition("/traces/")[2].lower().removeprefix("0x")
    for trace in wanted:
        hex_id = trace.lower().removeprefix("0x")
        if value == hex_id:
            return True
        try:  # Datadog's decimal: the lower 64 bits
            if value.isdigit() and int(value) == int(hex_id, 16) & (2**64 - 1):
                return True
        except ValueError:
            continue
    return False


def _id_matches(value: Any, wanted: Sequence[str]) -> bool:
    return isinstance(value, str) and any(value.startswith(w) for w in wanted)


def _levelno(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        name = value.strip().upper()
        name = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(name, name)
        number = logging.getLevelName(name)
        if isinstance(number, int):
            return number
    return None


def to_log_record(record: Mapping[str, Any]) -> logging.LogRecord:
    """A :class:`logging.LogRecord` for a parsed JSON line, ready for ConsoleFormatter."""
    time_key, when = _first(record, _TIME_KEYS)
    level_key, level = _first(record, _LEVEL_KEYS)
    logger_key, name = _first(record, _LOGGER_KEYS)
    message_key, message = _first(record, _MESSAGE_KEYS)
    levelno = _levelno(level) or 0
    out = logging.LogRecord(
        name=safe_str(name) if name is not None else "?",
        level=levelno,
        pathname="",
        lineno=0,
        msg=safe_str(message) if message is not None else "",
        args=None,
        exc_info=None,
    )
    out.levelname = (
        safe_str(level).upper() if level is not None else (logging.getLevelName(levelno) or "?")
    )
    created = _epoch(when)
    used = {time_key, level_key, logger_key, message_key}
    if created is None:
        created = 0.0
        used.discard(time_key)  # show the unusable value as a field
    out.created = created
    out.msecs = (created - int(created)) * 1000
    exception = record.get("exception")
    if isinstance(exception, Mapping):
        exc_text = exception.get("traceback") or (
            f"{exception.get('type', 'Exception')}: {exception.get('message', '')}"
        )
        out.exc_text = safe_str(exc_text)
    elif exception is not None:
        out.exc_text = safe_str(exception)
    if record.get("stack") is not None:
        out.stack_info = safe_str(record["stack"])
    ctx = {k: v for k, v in record.items() if k not in used and k not in _HIDDEN}
    out.__dict__["_logkit_ctx"] = ctx
    return out


class Renderer:
    """Turns entries into console lines with logkit's :class:`ConsoleFormatter` look."""

    def __init__(self, *, color: bool, labels: Sequence[str] = ()) -> None:
        self.formatter = ConsoleFormatter(LogConfig(), use_color=color)
        self.width = max((len(label) for label in labels), default=0) if len(labels) > 1 else 0
        self.dim, self.reset = ("\x1b[2m", "\x1b[0m") if color else ("", "")

    def __call__(self, entry: Entry) -> str:
        if entry.record is None:
            line = f"{self.dim}{clean(entry.text)}{self.reset}"
        else:
            line = self.formatter.format(to_log_record(entry.record))
        if self.width:
            line = f"{self.dim}{clean(entry.label):<{self.width}}{self.reset} {line}"
        return line


def render(record: Mapping[str, Any], *, color: bool = False) -> str:
    """One parsed JSON log record as a console line (escaped; coloured if ``color``)."""
    return Renderer(color=color)(Entry(0.0, 0, 0, "", dict(record), ""))


@dataclass
class ViewStats:
    """What ``view`` read: records, non-JSON lines, lines printed."""

    records: int = 0
    other: int = 0
    printed: int = 0


def view_lines(
    entries: Iterable[Entry], filters: Filters, renderer: Renderer, stats: ViewStats
) -> Iterator[str]:
    """The output lines for ``entries``: filtered, rendered."""
    for entry in entries:
        if entry.record is None:
            stats.other += 1
            if filters.active:
                continue
        else:
            stats.records += 1
            if not filters.match(entry.record):
                continue
        stats.printed += 1
        yield renderer(entry)


def _labels(names: Sequence[str]) -> list[str]:
    labels = [Path(n).name if n != "-" else "<stdin>" for n in names]
    if len(set(labels)) < len(labels):  # same base name in different dirs
        labels = [n if n != "-" else "<stdin>" for n in names]
    return labels


def _use_color(flag: bool | None, stream: IO[str]) -> bool:
    if flag is not None:
        return flag
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR", "") not in ("", "0"):
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


def _write(out: IO[str], lines: Iterable[str]) -> None:
    for line in lines:
        out.write(line + "\n")
    out.flush()


def run_view(
    files: Sequence[str],
    filters: Filters,
    *,
    follow: bool = False,
    color: bool | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    poll_interval: float = 0.2,
) -> int:
    """``logkit view``: print ``files`` (``-`` = stdin) merged in time order; return the status."""
    out = out or sys.stdout
    err = err or sys.stderr
    names = list(files) or ["-"]
    if follow and "-" in names and len(names) > 1:
        raise click.UsageError("-f cannot follow stdin together with files")
    labels = _labels(names)
    sources: list[_Source] = []
    try:
        for index, (name, label) in enumerate(zip(names, labels, strict=True)):
            try:
                sources.append(_Source(name, index, label))
            except OSError as exc:
                raise click.FileError(name, hint=exc.strerror or str(exc)) from None
        renderer = Renderer(color=_use_color(color, out), labels=labels)
        stats = ViewStats()
        if follow and names == ["-"]:
            # A pipe: print each line as it arrives.
            source = sources[0]
            for raw in iter(source.fh.readline, b""):
                if raw.strip():
                    _write(out, view_lines([source.entry(raw)], filters, renderer, stats))
            return 0
        _write(out, view_lines(merged(sources, follow=follow), filters, renderer, stats))
        if follow:
            followed = [s for s in sources if s.followable]
            while True:
                batch = sorted(
                    (e for s in followed for e in s.poll()), key=Entry.sort_key
                )
                if batch:
                    _write(out, view_lines(batch, filters, renderer, stats))
                time.sleep(poll_interval)
    finally:
        for source in sources:
            source.close()
    if stats.other:
        what = "skipped (filters are set)" if filters.active else "shown as they are"
        err.write(f"logkit view: {stats.other} line(s) were not JSON objects: {what}\n")
    if filters.active and stats.records and not stats.printed:
        err.write(f"logkit view: no record matched the filters ({stats.records} records read)\n")
    return 0


# ---------------------------------------------------------------------------
# The `logkit` command
# ---------------------------------------------------------------------------


def _field_option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"expected KEY=VALUE; got {text!r}", param_hint="--field")
    return key, value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="logkit", prog_name="logkit")
def main() -> None:
    """logkit: production-grade logs for Celery workers.

    \b
    logkit demo                 run a real worker and show its logs
    logkit view w1.log w2.log   read JSON logs of several workers as one story
    """


@main.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "console", "plain"], case_sensitive=False),
    default="console",
    show_default=True,
    help="Output format of the worker's logs.",
)
@click.option(
    "--pool",
    type=click.Choice(["prefork", "threads", "solo", "gevent", "eventlet"]),
    default="prefork",
    show_default=True,
    help="Worker pool.",
)
@click.option(
    "-c", "--concurrency", type=click.IntRange(1, 16), default=2, show_default=True,
    help="Worker processes/threads.",
)
@click.option(
    "--broker",
    metavar="URL",
    default=None,
    help="Use this broker (e.g. redis://localhost:6379/0) instead of the embedded one.",
)
def demo(fmt: str, pool: str, concurrency: int, broker: str | None) -> None:
    """Start a real worker, send tasks that succeed, fail and retry, show the logs.

    The worker's log goes to stdout, the demo's narration to stderr.
    """
    from .demo import DemoError, run_demo

    try:
        code = run_demo(fmt.lower(), pool, concurrency=concurrency, broker=broker)
    except DemoError as exc:
        click.echo(f"logkit demo: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("logkit demo: interrupted", err=True)
        sys.exit(130)
    sys.exit(code)


@main.command()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-f", "--follow", is_flag=True, help="Keep reading lines appended to the files.")
@click.option("--task", "tasks", multiple=True, metavar="ID", help="Only this task's records.")
@click.option(
    "--root", "roots", multiple=True, metavar="ID",
    help="Only records of the workflow started by this task (its root_id).",
)
@click.option(
    "--level",
    type=click.Choice(LEVEL_NAMES, case_sensitive=False),
    default=None,
    help="Minimum level.",
)
@click.option(
    "--event", "events", multiple=True, metavar="NAME",
    help="Only these lifecycle events (glob patterns, e.g. 'task_*').",
)
@click.option(
    "--request", "requests", multiple=True, metavar="ID",
    help="Only records of this web request (its whole request_id): the web process's "
    "and its tasks'.",
)
@click.option(
    "--field", "fields", multiple=True, metavar="KEY=VALUE",
    help="Only records whose KEY equals VALUE (e.g. user_id=42).",
)
@click.option(
    "--trace", "traces", multiple=True, metavar="ID",
    help="Only records of this trace (its 32 hex digit id, in any schema).",
)
@click.option("--color/--no-color", default=None, help="Colour (default: on a terminal).")
def view(
    files: tuple[str, ...],
    follow: bool,
    tasks: tuple[str, ...],
    roots: tuple[str, ...],
    level: str | None,
    events: tuple[str, ...],
    requests: tuple[str, ...],
    fields: tuple[str, ...],
    traces: tuple[str, ...],
    color: bool | None,
) -> None:
    """Print JSON log lines from FILES (or stdin) as console lines, in time order.

    Several files (e.g. one per worker) are merged by their timestamps; ids match
    by prefix; several values of one filter mean "any of them".
    """
    filters = Filters(
        tasks=tasks,
        roots=roots,
        events=events,
        level=logging.getLevelName(level.upper()) if level else 0,
        fields=(*(("request_id", r) for r in requests), *map(_field_option, fields)),
        traces=traces,
    )
    try:
        code = run_view(files, filters, follow=follow, color=color)
    except KeyboardInterrupt:
        code = 0
    except BrokenPipeError:
        # `logkit view big.log | head`: stop quietly.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)
