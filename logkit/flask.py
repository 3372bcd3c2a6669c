"""Request context for Flask: ``logkit.flask.init_app(app)``.

::

    import logkit.flask

    app = Flask(__name__)
    logkit.flask.init_app(app, client_ip=True)

Options come from ``init_app``'s keyword arguments and from ``app.config``
(``LOGKIT_REQUEST_<OPTION>``, e.g. ``LOGKIT_REQUEST_CLIENT_IP = True``); keyword
arguments win. ``init_app`` wraps ``app.wsgi_app`` in :class:`logkit.wsgi.RequestContextMiddleware`
(so a streamed response keeps its request id) and keeps it in ``app.extensions["logkit"]``.
"""

from __future__ import annotations

from typing import Any

try:
    import flask  # noqa: F401  (only to fail early with a clear message)
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "logkit.flask needs Flask: pip install 'celery-logkit[flask]'"
    ) from exc

from ._request import RequestOptions
from .wsgi import RequestContextMiddleware

__all__ = ["CONFIG_PREFIX", "init_app"]

#: ``app.config`` keys read by :func:`init_app`: ``LOGKIT_REQUEST_`` + the option in capitals.
CONFIG_PREFIX = "LOGKIT_REQUEST_"


def init_app(app: Any, **options: Any) -> RequestContextMiddleware:
    """Bind each request's context (request id, method, path...) in a Flask app.

    Wraps ``app.wsgi_app`` in ``logkit.wsgi.RequestContextMiddleware``. Calling it twice
    on one app replaces the options instead of wrapping twice.

    Args:
        app: The Flask app.
        **options: Request options (``RequestOptions``); they win over the app's
            ``LOGKIT_REQUEST_<OPTION>`` config keys.

    Returns:
        The middleware, also kept in ``app.extensions["logkit"]``.

    Raises:
        ConfigError: An unknown or invalid option.
    """
    from_config = {
        key[len(CONFIG_PREFIX):].lower(): value
        for key, value in app.config.items()
        if key.startswith(CONFIG_PREFIX)
    }
    merged = {**from_config, **options}
    RequestOptions.from_mapping(merged, f"init_app() / app.config[{CONFIG_PREFIX}*]")
    existing = app.extensions.get("logkit")
    if isinstance(existing, RequestContextMiddleware) and app.wsgi_app is existing:
        inner = existing.app
    else:
        inner = app.wsgi_app
    middleware = RequestContextMiddleware(inner, **merged)
    app.wsgi_app = middleware
    app.extensions["logkit"] = middleware
    return middleware
