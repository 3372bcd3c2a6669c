"""The core shared by the web request middlewares (:mod:`logkit.django`, :mod:`logkit.asgi`,
:mod:`logkit.wsgi`, :mod:`logkit.flask`); no framework is imported here.

Per request: :meth:`RequestOptions.start` reads the incoming request id (kept only if
trusted or safe), the method, the path and (if enabled) the client IP, and returns a
:class:`RequestScope`. The middleware binds ``scope.values`` in :mod:`logkit.context`
for the duration of the request (token-based: the previous context comes back
afterwards), echoes ``scope.request_id`` in the response header and calls
:meth:`RequestScope.finished` once, which logs the ``request_finished`` event.

Data flow: request -> RequestScope (values) -> context -> records / task headers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import ConfigError

__all__ = [
    "EVENT_NAME",
    "REQUEST_FIELDS",
    "RequestOptions",
    "RequestScope",
    "safe_request_id",
]

#: The event logged once per request, on the ``logkit.events`` logger.
EVENT_NAME = "request_finished"
EVENTS_LOGGER = "logkit.events"

#: Context keys the middlewares bind (``user_id`` only where the framework knows the user).
REQUEST_FIELDS: tuple[str, ...] = ("request_id", "http_method", "http_path", "client_ip", "user_id")

#: An untrusted incoming id is kept only if it matches this (letters, digits, ``-_.:``; 1-128).
SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._:-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: Longest id kept from a trusted header (a trusted value must also be free of control chars).
TRUSTED_MAX_LENGTH = 1024
#: How much of a rejected id is kept, after dropping every unsafe character.
REJECTED_SAMPLE_LENGTH = 32

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_OFF = (None, False, "off", "OFF", "none", "")

_events_logger = logging.getLogger(EVENTS_LOGGER)


def new_request_id() -> str:
    """A fresh request id: a UUID4 in hex (32 characters)."""
    return uuid.uuid4().hex


def safe_request_id(value: str) -> bool:
    """True if ``value`` may be kept as a request id although its header is not trusted."""
    return SAFE_ID.fullmatch(value) is not None


def _header_name(name: Any, option: str) -> str:
    if not isinstance(name, str) or not name or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+",
                                                                  name):
        raise ValueError(f"{option} must be an HTTP header name; got {name!r}")
    return name


def _headers(value: Any, option: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value or ())
    return tuple(_header_name(v, option).lower() for v in items)


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """Options of the request middlewares, validated once (bad ones raise ``ConfigError``)."""

    #: Incoming header the request id is read from.
    request_id_header: str = "X-Request-ID"
    #: Response header the request id is echoed in (``None``: not echoed).
    response_header: str | None = "X-Request-ID"
    #: Trust the incoming id header (it is set by your own proxy): keep any value without
    #: control characters up to 1024 characters, not only ids matching the safe pattern.
    trust_request_id: bool = False
    #: Makes a new request id (no arguments, returns a ``str``); default: UUID4 hex.
    generate_id: Callable[[], str] = new_request_id
    #: Keep the query string in ``http_path`` (off: query strings often carry tokens).
    query_string: bool = False
    #: Bind ``client_ip`` (off by default: it is personal data in many jurisdictions).
    client_ip: bool = False
    #: Proxy headers trusted for the client IP, first found wins (e.g. ``["X-Forwarded-For"]``
    #: or ``["X-Real-IP"]``); empty: the peer address only.
    trusted_proxy_headers: tuple[str, ...] = ()
    #: Number of your own proxies that append to ``X-Forwarded-For``: the client is the
    #: address that many entries from the right.
    trusted_proxy_count: int = 1
    #: Bind ``user_id`` where the framework knows the user (Django: ``request.user.pk``).
    user_id: bool = True
    #: Level of the ``request_finished`` event, or ``None``/``"off"`` for no event.
    event_level: str | None = "INFO"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                object.__setattr__(self, f.name, _PARSERS[f.name](value))
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"logkit: invalid value for request option {f.name!r}: {exc}"
                ) from None

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Names of every option, in definition order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None, source: str = "options") -> (
        RequestOptions
    ):
        """Options from a mapping (kwargs, a Django setting, Flask config); unknown names raise."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(cls.option_names()), key=str)
        if unknown:
            raise ConfigError(
                f"logkit: unknown request option(s) {', '.join(map(repr, unknown))} in {source}; "
                f"valid options: {', '.join(cls.option_names())}"
            )
        return cls(**options)

    @property
    def event_levelno(self) -> int | None:
        return None if self.event_level is None else logging.getLevelName(self.event_level)

    # -- per request ---------------------------------------------------------------

    def start(
        self,
        method: Any,
        path: Any,
        query: Any,
        header: Callable[[str], str | None],
        peer: Any,
    ) -> RequestScope:
        """Read one request: ``header(name)`` returns a header's value (or ``None``)."""
        scope = RequestScope(self)
        incoming = header(self.request_id_header)
        request_id = None
        if incoming is not None:
            if self._keep(incoming):
                request_id = incoming
            else:
                scope.rejected = incoming
        if request_id is None:
            request_id = self._generate()
        scope.request_id = request_id
        values: dict[str, Any] = {"request_id": request_id}
        if method:
            values["http_method"] = _printable(str(method), 16)
        if path is not None:
            text = str(path)
            if self.query_string and query:
                text = f"{text}?{query}"
            values["http_path"] = _printable(text, 2048)
        if self.client_ip:
            ip = self._client_ip(header, peer)
            if ip is not None:
                values["client_ip"] = ip
        scope.values = values
        return scope

    def _keep(self, value: str) -> bool:
        if self.trust_request_id:
            return 0 < len(value) <= TRUSTED_MAX_LENGTH and _CONTROL.search(value) is None
        return safe_request_id(value)

    def _generate(self) -> str:
        try:
            value = self.generate_id()
        except Exception:
            return new_request_id()
        return value if isinstance(value, str) and value else new_request_id()

    def _client_ip(self, header: Callable[[str], str | None], peer: Any) -> str | None:
        for name in self.trusted_proxy_headers:
            raw = header(name)
            if not raw:
                continue
            entries = [e.strip() for e in raw.split(",") if e.strip()]
            if not entries:
                continue
            candidate = entries[max(len(entries) - self.trusted_proxy_count, 0)]
            ip = _ip(candidate)
            if ip is not None:
                return ip
        return _ip(peer)


def _ip(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.startswith("[") and "]" in text:  # [::1]:443
        text = text[1 : text.index("]")]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _printable(text: str, limit: int) -> str:
    """``text`` with control characters escaped and capped (a path or method is attacker input)."""
    if _CONTROL.search(text):
        text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= limit else text[:limit] + "..."


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0",
                                                            "false", "no", "off"):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise ValueError(f"must be a boolean; got {value!r}")


def _callable(value: Any) -> Callable[[], str]:
    if not callable(value):
        raise ValueError(f"must be a callable returning a str; got {value!r}")
    fn: Callable[[], str] = value
    return fn


def _level(value: Any) -> str | None:
    if value in _OFF:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = logging.getLevelName(value)
    text = str(value).strip().upper()
    text = "WARNING" if text == "WARN" else text
    if text not in _LEVELS:
        raise ValueError(f"must be one of {', '.join(map(repr, _LEVELS))} or 'off'; got {value!r}")
    return text


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be a positive integer; got {value!r}")
    return value


def _optional_header(value: Any) -> str | None:
    return None if value in _OFF else _header_name(value, "the header")


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "request_id_header": lambda v: _header_name(v, "the header"),
    "response_header": _optional_header,
    "trust_request_id": _bool,
    "generate_id": _callable,
    "query_string": _bool,
    "client_ip": _bool,
    "trusted_proxy_headers": lambda v: _headers(v, "each header"),
    "trusted_proxy_count": _count,
    "user_id": _bool,
    "event_level": _level,
}


class RequestScope:
    """One request: what to bind, the id to echo, and the ``request_finished`` event."""

    __slots__ = ("_done", "options", "rejected", "request_id", "started", "values")

    def __init__(self, options: RequestOptions) -> None:
        self.options = options
        self.request_id = ""
        self.values: dict[str, Any] = {}
        #: The incoming id that was not kept (never logged raw).
        self.rejected: str | None = None
        self.started = time.perf_counter()
        self._done = False

    def rejected_fields(self) -> dict[str, Any]:
        """Fields describing a rejected incoming id: its length and its safe characters."""
        if self.rejected is None:
            return {}
        sample = _UNSAFE_CHARS.sub("", self.rejected[:1024])[:REJECTED_SAMPLE_LENGTH]
        return {"rejected_request_id_length": len(self.rejected),
                "rejected_request_id": sample}

    def finished(self, status: Any, extra: Mapping[str, Any] | None = None) -> None:
        """Log ``request_finished`` (once; the caller binds the request's context around it)."""
        if self._done:
            return
        self._done = True
        level = self.options.event_levelno
        if level is None or not _events_logger.isEnabledFor(level):
            return
        fields: dict[str, Any] = {
            "event": EVENT_NAME,
            "status": status,
            "duration_ms": round((time.perf_counter() - self.started) * 1000, 3),
        }
        fields.update(self.rejected_fields())
        if extra:
            fields.update(extra)
        with contextlib.suppress(Exception):  # logging must never break a response
            _events_logger.log(level, "Request finished", extra=fields)


def header_getter(pairs: Iterable[tuple[bytes, bytes]]) -> Callable[[str], str | None]:
    """``header(name)`` over raw ASGI header pairs (latin-1, first value wins)."""
    table: dict[str, str] = {}
    for key, value in pairs:
        name = key.decode("latin-1").lower()
        if name not in table:
            table[name] = value.decode("latin-1")
    return lambda name: table.get(name.lower())
