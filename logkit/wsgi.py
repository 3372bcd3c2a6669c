"""Request context for any WSGI app (Flask, Django under WSGI, Pyramid, Bottle, ...).

No framework is imported::

    from logkit.wsgi import RequestContextMiddleware

    application = RequestContextMiddleware(application, client_ip=True)

The request's context is bound while the app is called and again around each step
of the response body and its ``close()``: a streaming body keeps its request id until
the last chunk, yet nothing stays bound in the server's thread between requests,
even if the server never calls ``close()``. ``request_finished`` is logged when the
body is closed (that is when it has been sent).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import context
from ._request import RequestOptions, RequestScope

__all__ = ["RequestContextMiddleware"]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _environ_header(environ: dict[str, Any]) -> Callable[[str], str | None]:
    def header(name: str) -> str | None:
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value = environ.get(key)
        return value if isinstance(value, str) else None

    return header


class RequestContextMiddleware:
    """Bind the request's context while ``app`` handles a request; log ``request_finished``.

    The context is bound again around each chunk of the response body and its
    ``close()``, which logs ``request_finished``.

    Args:
        app: The WSGI app to wrap.
        **options: Request options (``RequestOptions``: ``request_id_header``,
            ``client_ip``, ``event_level``...).

    Raises:
        ConfigError: An unknown or invalid option.
    """

    def __init__(self, app: WSGIApp, **options: Any) -> None:
        self.app = app
        self.options = RequestOptions.from_mapping(options, "RequestContextMiddleware()")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request = self.options.start(
            method=environ.get("REQUEST_METHOD"),
            path=(environ.get("SCRIPT_NAME") or "") + (environ.get("PATH_INFO") or ""),
            query=environ.get("QUERY_STRING"),
            header=_environ_header(environ),
            peer=environ.get("REMOTE_ADDR"),
        )
        status: list[int] = []
        echo = self.options.response_header

        def start_with_id(status_line: str, headers: list[tuple[str, str]],
                          exc_info: Any = None) -> Any:
            try:
                status.append(int(status_line.split(" ", 1)[0]))
            except ValueError:
                status.append(0)
            if echo is not None:
                lowered = echo.lower()
                headers = [(k, v) for k, v in headers if k.lower() != lowered]
                headers.append((echo, request.request_id))
            if exc_info is not None:
                return start_response(status_line, headers, exc_info)
            return start_response(status_line, headers)

        with context.bound(**request.values):
            try:
                body = self.app(environ, start_with_id)
            except BaseException:
                request.finished(status[-1] if status else 500)
                raise
            # What the app bound during the call (e.g. a user id) stays with its body.
            snapshot = dict(context.current())
        return _Body(body, snapshot, request, status)


class _Body:
    """The app's response body, iterated and closed with the request's context bound."""

    def __init__(
        self, body: Iterable[bytes], values: dict[str, Any], request: RequestScope,
        status: list[int]
    ) -> None:
        self._body = body
        self._values = values
        self._request = request
        self._status = status

    def __iter__(self) -> Iterator[bytes]:
        iterator = iter(self._body)
        while True:
            with context.bound(**self._values):
                try:
                    chunk = next(iterator)
                except StopIteration:
                    return
            yield chunk

    def close(self) -> None:
        with context.bound(**self._values):
            try:
                close = getattr(self._body, "close", None)
                if close is not None:
                    close()
            finally:
                self._request.finished(self._status[-1] if self._status else None)
