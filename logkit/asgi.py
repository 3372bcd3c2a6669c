"""Request context for any ASGI app (Starlette, FastAPI, Django under ASGI, ...).

A pure ASGI middleware, like Starlette's own: it needs no framework, so importing it
imports none::

    from logkit.asgi import RequestContextMiddleware

    app = RequestContextMiddleware(app)                      # any ASGI app
    app.add_middleware(RequestContextMiddleware)             # Starlette / FastAPI

The request's context (``request_id``, ``http_method``, ``http_path``, optionally
``client_ip``) is bound around the whole ``await app(scope, receive, send)``, so it
covers a streaming body until its last chunk is sent; each request runs in its own
asyncio task, so concurrent requests never see each other's context.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from . import context
from ._request import RequestOptions, header_getter

__all__ = ["RequestContextMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestContextMiddleware:
    """Bind the request's context while ``app`` handles an HTTP request; log ``request_finished``.

    Lifespan and websocket scopes pass through untouched. The request id is echoed in the
    response header (``response_header``).

    Args:
        app: The ASGI app to wrap.
        **options: Request options (``RequestOptions``: ``request_id_header``,
            ``client_ip``, ``event_level``...).

    Raises:
        ConfigError: An unknown or invalid option.
    """

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        self.app = app
        self.options = RequestOptions.from_mapping(options, "RequestContextMiddleware()")
        response = self.options.response_header
        self._response_header = response.lower().encode("latin-1") if response else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":  # lifespan, websocket: untouched
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        request = self.options.start(
            method=scope.get("method"),
            path=(scope.get("root_path") or "") + (scope.get("path") or ""),
            query=(scope.get("query_string") or b"").decode("latin-1"),
            header=header_getter(scope.get("headers") or ()),
            peer=peer[0] if peer else None,
        )
        status: list[int] = []
        echo = self._response_header
        request_id = request.request_id.encode("latin-1", "replace")

        async def send_with_id(message: Message) -> None:
            if message.get("type") == "http.response.start":
                status.append(message.get("status", 0))
                if echo is not None:
                    headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != echo]
                    headers.append((echo, request_id))
                    message["headers"] = headers
            await send(message)

        with context.bound(**request.values):
            try:
                await self.app(scope, receive, send_with_id)
            except BaseException:
                request.finished(status[0] if status else 500)
                raise
            request.finished(status[0] if status else None)
