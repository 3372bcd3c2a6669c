"""Trace correlation: the ids of the current OpenTelemetry span, without OTel's logging
instrumentation.

``opentelemetry-api`` is optional. :func:`span_lookup` imports it once, when a
formatter is built, and returns ``None`` without it: then a record costs nothing
more. With it, the lookup reads OpenTelemetry's context variable directly (one
``ContextVar.get`` and one dict lookup when no span is current) and formats a
span's ids once per span.

Ids are ``(trace_id, span_id, trace_flags)``: 32 and 16 lowercase hex digits, as the
W3C ``traceparent`` header and OpenTelemetry write them; each schema
(:mod:`logkit.schemas`) turns them into its backend's format.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

__all__ = ["Ids", "ids_from_headers", "span_lookup"]

#: ``(trace_id, span_id, trace_flags)``: 32 and 16 lowercase hex digits, and the W3C trace
#: flags (bit 0: sampled).
Ids = tuple[str, str, int]


def span_lookup() -> Callable[[], Ids | None] | None:
    """A function returning the ids of the current recording span (or ``None`` when there
    is none); ``None`` itself when ``opentelemetry-api`` is not installed."""
    try:
        from opentelemetry import context as otel_context
        from opentelemetry.trace.propagation import _SPAN_KEY
    except ImportError:
        return None
    var = getattr(getattr(otel_context, "_RUNTIME_CONTEXT", None), "_current_context", None)
    get_context: Callable[[], Mapping[str, Any]] = (
        var.get if isinstance(var, ContextVar) else otel_context.get_current
    )
    # the last span seen and its ids: a task's records share one span
    last: list[Any] = [None, None]

    def lookup() -> Ids | None:
        span = get_context().get(_SPAN_KEY)
        if span is None:
            return None
        try:
            if not span.is_recording():
                return None
            if span is last[0]:
                ids: Ids = last[1]
                return ids
            sc = span.get_span_context()
            if not sc.trace_id:
                return None
            ids = (f"{sc.trace_id:032x}", f"{sc.span_id:016x}", int(sc.trace_flags))
        except Exception:  # a broken span must not break a log call
            return None
        last[0], last[1] = span, ids
        return ids

    return lookup


def ids_from_headers(headers: Any) -> Ids | None:
    """The ids of the span a task message was published in (its ``traceparent`` header),
    or ``None`` (no header, or no ``opentelemetry-api``)."""
    if not isinstance(headers, Mapping) or "traceparent" not in headers:
        return None
    try:
        from opentelemetry import trace as otel_trace
        from opentelemetry.propagate import extract
    except ImportError:
        return None
    try:
        carrier = {k: v for k, v in headers.items() if isinstance(k, str) and isinstance(v, str)}
        sc = otel_trace.get_current_span(extract(carrier)).get_span_context()
    except Exception:
        return None
    if not sc.trace_id:
        return None
    return (f"{sc.trace_id:032x}", f"{sc.span_id:016x}", int(sc.trace_flags))
