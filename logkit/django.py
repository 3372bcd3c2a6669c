"""Request context for Django: ``logkit.django.RequestContextMiddleware``.

Add it near the top of ``MIDDLEWARE`` (before anything that logs), e.g.::

    MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "logkit.django.RequestContextMiddleware",
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        ...,
    ]

    LOGKIT_REQUEST = {"client_ip": True}   # optional: logkit._request.RequestOptions

It works under WSGI and ASGI (sync and async views). ``user_id`` is
``request.user.pk``, read after the authentication middleware ran: in
``process_view`` (so tasks published by the view carry it) and again at response
time (a login view changes the user). Never a username or an email.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
    from django.conf import settings
    from django.utils.functional import empty
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("logkit.django needs Django: pip install 'celery-logkit[django]'") from exc

from . import context
from ._request import RequestOptions, RequestScope

__all__ = ["SETTING", "RequestContextMiddleware"]

#: The Django setting holding the options (a dict), read once per middleware instance.
SETTING = "LOGKIT_REQUEST"


def _user_id(request: Any, force: bool) -> Any:
    """``request.user.pk``; with ``force=False`` only if the lazy user was already loaded."""
    user = getattr(request, "__dict__", {}).get("user")
    if user is None:
        return None
    if not force and getattr(user, "_wrapped", None) is empty:  # a lazy user not loaded yet
        return None
    try:
        if not getattr(user, "is_authenticated", False):
            return None
        pk = user.pk
    except Exception:
        return None
    return pk if isinstance(pk, (int, str)) else str(pk)


class RequestContextMiddleware:
    """Bind the request's context for the request and its tasks; log ``request_finished``.

    A Django middleware (sync and async): list ``"logkit.django.RequestContextMiddleware"``
    in ``MIDDLEWARE``. Options come from the ``LOGKIT_REQUEST`` setting (a dict of the
    options below: ``RequestOptions``), read once when Django builds the middleware.
    Each request gets ``request.request_id``, and the id in the response header.

    Args:
        get_response: The next middleware or view (Django passes it).

    Raises:
        ConfigError: ``LOGKIT_REQUEST`` has an unknown or invalid option.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.options = RequestOptions.from_mapping(
            getattr(settings, SETTING, None), f"settings.{SETTING}"
        )
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def _start(self, request: Any) -> RequestScope:
        meta = request.META
        return self.options.start(
            method=request.method,
            path=request.path,
            query=meta.get("QUERY_STRING"),
            header=request.headers.get,
            peer=meta.get("REMOTE_ADDR"),
        )

    def __call__(self, request: Any) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        scope = self._start(request)
        request.request_id = scope.request_id
        with context.bound(**scope.values):
            try:
                response = self.get_response(request)
            except BaseException:
                scope.finished(500, self._user(request))
                raise
            return self._finish(request, response, scope)

    async def __acall__(self, request: Any) -> Any:
        scope = self._start(request)
        request.request_id = scope.request_id
        with context.bound(**scope.values):
            try:
                response = await self.get_response(request)
            except BaseException:
                scope.finished(500, self._user(request))
                raise
            return self._finish(request, response, scope)

    def process_view(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> None:
        """Bind ``user_id`` (``request.user.pk``) for the view and the tasks it sends.

        Django calls it after the authentication middleware ran; nothing is bound for an
        anonymous user or with the ``user_id`` option off.

        Args:
            request: The request (its ``user`` is read).
            view_func: The view Django is about to call (unused).
            view_args: Its positional arguments (unused).
            view_kwargs: Its keyword arguments (unused).
        """
        if self.options.user_id:
            user_id = _user_id(request, force=True)
            if user_id is not None:
                context.bind(user_id=user_id)

    def _user(self, request: Any) -> dict[str, Any]:
        if not self.options.user_id:
            return {}
        user_id = _user_id(request, force=False)
        return {} if user_id is None else {"user_id": user_id}

    def _finish(self, request: Any, response: Any, scope: RequestScope) -> Any:
        header = self.options.response_header
        if header is not None:
            response[header] = scope.request_id
        status = getattr(response, "status_code", None)
        if getattr(response, "streaming", False):
            values = {**context.current(), **self._user(request)}
            if getattr(response, "is_async", False):
                response.streaming_content = _abody(response.streaming_content, values, scope,
                                                    status)
            else:
                response.streaming_content = _body(response.streaming_content, values, scope,
                                                   status)
        else:
            scope.finished(status, self._user(request))
        return response


def _body(content: Any, values: dict[str, Any], scope: RequestScope, status: Any) -> Iterator[Any]:
    iterator = iter(content)
    try:
        while True:
            with context.bound(**values):
                try:
                    chunk = next(iterator)
                except StopIteration:
                    return
            yield chunk
    finally:
        with context.bound(**values):
            scope.finished(status)


async def _abody(
    content: Any, values: dict[str, Any], scope: RequestScope, status: Any
) -> AsyncIterator[Any]:
    iterator = content.__aiter__()
    try:
        while True:
            with context.bound(**values):
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    return
            yield chunk
    finally:
        with context.bound(**values):
            scope.finished(status)
