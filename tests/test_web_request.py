"""The request context middlewares in-process: options, id trust, binding, no leaks (#14).

Real servers and a real worker are in test_web_servers.py; Django in test_web_django.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

import logkit
from logkit import _request, cli, context
from logkit.config import LogConfig
from logkit.receivers import TaskContext

FORGED = {
    "newline": "abc\nlevel=CRITICAL msg=forged",
    "crlf": "abc\r\nX-Injected: 1",
    "ansi": "\x1b[31mred\x1b[0m",
    "oversized": "a" * 10_000,
    "129 chars": "b" * 129,
    "space": "has space",
    "quote": 'x"}, {"level": "CRITICAL"',
}


class Capture(logging.Handler):
    """Records of ``logkit.events`` and of the test logger, with the context at emit time."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.items: list[tuple[logging.LogRecord, dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.items.append((record, context.get_context()))

    def events(self) -> list[tuple[logging.LogRecord, dict[str, Any]]]:
        return [(r, c) for r, c in self.items if getattr(r, "event", None) == "request_finished"]


@pytest.fixture
def capture() -> Iterator[Capture]:
    handler = Capture()
    loggers = [logging.getLogger("logkit.events"), logging.getLogger("webapp")]
    old = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield handler
    for lg, (level, _) in zip(loggers, old, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


def test_unknown_option_lists_the_valid_ones() -> None:
    with pytest.raises(logkit.ConfigError) as info:
        _request.RequestOptions.from_mapping({"request_header": "X-Id"}, "here")
    message = str(info.value)
    assert "'request_header'" in message and "here" in message
    for name in _request.RequestOptions.option_names():
        assert name in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("event_level", "LOUD", "'DEBUG', 'INFO'"),
        ("request_id_header", "X Bad\n", "HTTP header name"),
        ("generate_id", "uuid", "callable"),
        ("trusted_proxy_count", 0, "positive integer"),
        ("client_ip", "maybe", "boolean"),
    ],
)
def test_bad_option_values(name: str, value: Any, expected: str) -> None:
    with pytest.raises(logkit.ConfigError, match=name) as info:
        _request.RequestOptions(**{name: value})
    assert expected in str(info.value)


def test_options_are_frozen_and_normalised() -> None:
    options = _request.RequestOptions(
        event_level="off", trusted_proxy_headers="X-Forwarded-For", client_ip="yes"
    )
    assert options.event_level is None and options.client_ip is True
    assert options.trusted_proxy_headers == ("x-forwarded-for",)
    with pytest.raises(AttributeError):
        options.client_ip = False  # type: ignore[misc]


# ---------------------------------------------------------------------------
# The request id: trust, generation, forged values
# ---------------------------------------------------------------------------


def _start(options: _request.RequestOptions, headers: dict[str, str], peer: str = "10.0.0.9"):
    lowered = {k.lower(): v for k, v in headers.items()}
    return options.start("GET", "/p", "q=1", lambda n: lowered.get(n.lower()), peer)


@pytest.mark.parametrize("value", ["abc", "A-b_c.d:e", "x" * 128, "0f" * 16])
def test_safe_incoming_ids_are_kept(value: str) -> None:
    scope = _start(_request.RequestOptions(), {"X-Request-ID": value})
    assert scope.request_id == value and scope.rejected is None


@pytest.mark.parametrize("value", list(FORGED.values()), ids=list(FORGED))
def test_forged_ids_are_replaced_and_reported_safely(value: str) -> None:
    scope = _start(_request.RequestOptions(), {"X-Request-ID": value})
    assert scope.request_id != value and len(scope.request_id) == 32
    fields = scope.rejected_fields()
    assert fields["rejected_request_id_length"] == len(value)
    sample = fields["rejected_request_id"]
    assert (len(sample) <= 32 and _request.safe_request_id(sample)) or sample == ""


def test_trusted_header_keeps_any_printable_id_but_never_control_chars() -> None:
    options = _request.RequestOptions(trust_request_id=True)
    assert _start(options, {"X-Request-ID": "has space/and#more"}).request_id == (
        "has space/and#more"
    )
    for value in (FORGED["newline"], FORGED["ansi"], "z" * 2000):
        assert _start(options, {"X-Request-ID": value}).request_id != value


def test_custom_header_and_generator() -> None:
    counter = iter(range(100))
    options = _request.RequestOptions(
        request_id_header="X-Correlation-ID", generate_id=lambda: f"gen-{next(counter)}"
    )
    assert _start(options, {"X-Request-ID": "ignored"}).request_id == "gen-0"
    assert _start(options, {"X-Correlation-ID": "kept"}).request_id == "kept"


def test_path_without_query_by_default_and_client_ip_off() -> None:
    values = _start(_request.RequestOptions(), {}).values
    assert values["http_path"] == "/p" and values["http_method"] == "GET"
    assert "client_ip" not in values
    values = _start(_request.RequestOptions(query_string=True), {}).values
    assert values["http_path"] == "/p?q=1"


@pytest.mark.parametrize(
    ("options", "headers", "expected"),
    [
        ({}, {"X-Forwarded-For": "1.2.3.4"}, "10.0.0.9"),  # not trusted: the peer
        ({"trusted_proxy_headers": ["X-Forwarded-For"]}, {"X-Forwarded-For": "6.6.6.6, 1.2.3.4"},
         "1.2.3.4"),
        ({"trusted_proxy_headers": ["X-Forwarded-For"], "trusted_proxy_count": 2},
         {"X-Forwarded-For": "6.6.6.6, 1.2.3.4, 10.0.0.2"}, "1.2.3.4"),
        ({"trusted_proxy_headers": ["X-Real-IP"]}, {"X-Real-IP": "2001:db8::1"}, "2001:db8::1"),
        ({"trusted_proxy_headers": ["X-Real-IP"]}, {"X-Real-IP": "evil\nline"}, "10.0.0.9"),
    ],
)
def test_client_ip(options: dict[str, Any], headers: dict[str, str], expected: str) -> None:
    scope = _start(_request.RequestOptions(client_ip=True, **options), headers)
    assert scope.values["client_ip"] == expected


# ---------------------------------------------------------------------------
# Propagation: which keys travel to tasks
# ---------------------------------------------------------------------------


def test_request_id_travels_http_keys_stay_unless_named() -> None:
    ctx = {"request_id": "r1", "user_id": 7, "http_method": "GET", "http_path": "/x",
           "client_ip": "1.2.3.4", "tenant": "t"}
    assert TaskContext(LogConfig()).to_propagate(ctx) == {
        "request_id": "r1", "user_id": 7, "tenant": "t"
    }
    named = TaskContext(LogConfig(propagate=["*", "http_path"])).to_propagate(ctx)
    assert named["http_path"] == "/x" and "http_method" not in named
    only = TaskContext(LogConfig(propagate=["request_id"])).to_propagate(ctx)
    assert only == {"request_id": "r1"}


# ---------------------------------------------------------------------------
# ASGI, driven by hand
# ---------------------------------------------------------------------------


def _asgi_scope(path: str = "/p", headers: list[tuple[bytes, bytes]] | None = None) -> dict:
    return {"type": "http", "method": "GET", "path": path, "root_path": "", "query_string":
            b"token=secret", "headers": headers or [], "client": ("127.0.0.1", 5000)}


async def _call(app: Any, scope: dict) -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_asgi_binds_echoes_logs_and_resets(capture: Capture) -> None:
    from logkit.asgi import RequestContextMiddleware

    seen: list[dict] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(context.get_context())
        logging.getLogger("webapp").info("inside")
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"x-request-id", b"stale")]})
        for part in (b"a", b"b"):
            await asyncio.sleep(0)
            seen.append(context.get_context())
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    mw = RequestContextMiddleware(app)

    async def main() -> list[dict]:
        sent = await _call(mw, _asgi_scope(headers=[(b"x-request-id", b"abc-1")]))
        assert context.get_context() == {}
        return sent

    sent = asyncio.run(main())
    assert [c["request_id"] for c in seen] == ["abc-1"] * 3
    assert seen[0]["http_path"] == "/p" and "token" not in str(seen[0])
    assert sent[0]["headers"] == [(b"x-request-id", b"abc-1")]
    (record, ctx), = capture.events()
    assert record.name == "logkit.events" and record.levelno == logging.INFO
    assert record.status == 201 and record.duration_ms >= 0  # type: ignore[attr-defined]
    assert ctx["request_id"] == "abc-1"


def test_asgi_concurrent_requests_never_mix() -> None:
    from logkit.asgi import RequestContextMiddleware

    mismatches: list[tuple[str, str]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        expected = scope["path"].strip("/")
        for _ in range(5):
            await asyncio.sleep(0)
            got = context.get_context().get("request_id")
            if got != expected:
                mismatches.append((expected, str(got)))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = RequestContextMiddleware(app, event_level="off")

    async def main() -> None:
        await asyncio.gather(*(
            _call(mw, _asgi_scope(f"/r{i}", [(b"x-request-id", f"r{i}".encode())]))
            for i in range(200)
        ))

    asyncio.run(main())
    assert mismatches == []


def test_asgi_error_logs_500_and_reraises(capture: Capture) -> None:
    from logkit.asgi import RequestContextMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        asyncio.run(_call(RequestContextMiddleware(app), _asgi_scope()))
    (record, _), = capture.events()
    assert record.status == 500  # type: ignore[attr-defined]
    assert context.get_context() == {}


def test_asgi_passes_lifespan_through() -> None:
    from logkit.asgi import RequestContextMiddleware

    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])

    asyncio.run(_call(RequestContextMiddleware(app), {"type": "lifespan"}))
    assert calls == ["lifespan"]


# ---------------------------------------------------------------------------
# WSGI and Flask
# ---------------------------------------------------------------------------


@pytest.fixture
def flask_app() -> Any:
    flask = pytest.importorskip("flask")
    import logkit.flask

    app = flask.Flask("webtest")
    app.config["LOGKIT_REQUEST_CLIENT_IP"] = True
    seen: list[dict] = []
    app.seen = seen  # type: ignore[attr-defined]

    @app.get("/hello")
    def hello() -> str:
        seen.append(context.get_context())
        logkit.bind(user_id=42)
        logging.getLogger("webapp").info("hello")
        return "hi"

    @app.get("/stream")
    def stream() -> Any:
        def body() -> Iterator[str]:
            for i in range(3):
                seen.append(context.get_context())
                yield f"{i}\n"

        return flask.Response(body())

    logkit.flask.init_app(app, query_string=False)
    return app


def test_flask_binds_and_echoes(flask_app: Any, capture: Capture) -> None:
    client = flask_app.test_client()
    response = client.get("/hello?x=1", headers={"X-Request-ID": "flask-1"})
    response.close()  # the server's close(): the event is logged once the body is sent
    assert response.headers["X-Request-ID"] == "flask-1"
    ctx = flask_app.seen[0]
    assert ctx["request_id"] == "flask-1" and ctx["http_path"] == "/hello"
    assert ctx["client_ip"] == "127.0.0.1"
    (record, event_ctx), = capture.events()
    assert record.status == 200 and event_ctx["user_id"] == 42  # type: ignore[attr-defined]
    assert context.get_context() == {}


def test_flask_streaming_keeps_its_id(flask_app: Any, capture: Capture) -> None:
    client = flask_app.test_client()
    response = client.get("/stream", headers={"X-Request-ID": "stream-1"})
    assert response.data == b"0\n1\n2\n"
    response.close()
    assert [c["request_id"] for c in flask_app.seen] == ["stream-1"] * 3
    (_, event_ctx), = capture.events()
    assert event_ctx["request_id"] == "stream-1"
    assert context.get_context() == {}


@pytest.mark.parametrize("value", list(FORGED.values()), ids=list(FORGED))
def test_flask_forged_id_never_appears_raw(flask_app: Any, value: str) -> None:
    handler = logging.StreamHandler(stream := io.StringIO())
    from logkit.formatters import JsonFormatter

    handler.setFormatter(JsonFormatter())
    events = logging.getLogger("logkit.events")
    events.addHandler(handler)
    events.setLevel(logging.INFO)
    try:
        # in the environ: werkzeug's client refuses newlines in headers; a raw server may not
        response = flask_app.test_client().get(
            "/hello", environ_overrides={"HTTP_X_REQUEST_ID": value}
        )
        response.close()
    finally:
        events.removeHandler(handler)
    output = stream.getvalue()
    echoed = response.headers["X-Request-ID"]
    assert echoed != value and len(echoed) == 32
    escaped = json.dumps(value)[1:-1]
    assert value not in output and escaped not in output and "\\u001b" not in output
    assert "\x1b" not in output and "\r" not in output
    assert f'"request_id":"{echoed}"' in output.replace(" ", "")
    assert f'"rejected_request_id_length":{len(value)}' in output.replace(" ", "")


def test_flask_init_app_rejects_bad_config() -> None:
    flask = pytest.importorskip("flask")
    import logkit.flask

    app = flask.Flask("bad")
    app.config["LOGKIT_REQUEST_NOPE"] = 1
    with pytest.raises(logkit.ConfigError, match=r"'nope'.*valid options"):
        logkit.flask.init_app(app)


def test_wsgi_thread_is_clean_even_without_close(capture: Capture) -> None:
    from logkit.wsgi import RequestContextMiddleware

    def app(environ: dict, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"x"]

    mw = RequestContextMiddleware(app)
    body = mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda *a: None)
    assert context.get_context() == {}
    assert list(body) == [b"x"] and context.get_context() == {}
    assert capture.events() == []  # logged at close()
    body.close()  # type: ignore[attr-defined]
    assert len(capture.events()) == 1


# ---------------------------------------------------------------------------
# logkit view --request / --field
# ---------------------------------------------------------------------------


def test_view_request_and_field_filters(tmp_path: Any) -> None:
    web = tmp_path / "web.log"
    worker = tmp_path / "worker.log"
    web.write_text(
        '{"timestamp":"2025-01-01T00:00:00.000Z","level":"INFO","logger":"app","message":"w1",'
        '"request_id":"r1","user_id":7}\n'
        '{"timestamp":"2025-01-01T00:00:00.300Z","level":"INFO","logger":"app","message":"w2",'
        '"request_id":"r2"}\n'
    )
    worker.write_text(
        '{"timestamp":"2025-01-01T00:00:00.100Z","level":"INFO","logger":"t","message":"t1",'
        '"request_id":"r1","task_id":"aaa"}\n'
        '{"timestamp":"2025-01-01T00:00:00.200Z","level":"INFO","logger":"t","message":"t2",'
        '"request_id":"r10","task_id":"bbb"}\n'
    )
    runner = CliRunner()
    result = runner.invoke(cli.main, ["view", "--no-color", "--request", "r1", str(web),
                                      str(worker)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert [m for line in lines for m in ("w1", "t1", "t2", "w2") if m in line] == ["w1", "t1"]
    result = runner.invoke(cli.main, ["view", "--no-color", "--field", "user_id=7", str(web)])
    assert "w1" in result.output and "w2" not in result.output
    result = runner.invoke(cli.main, ["view", "--field", "nokey", str(web)])
    assert result.exit_code != 0 and "KEY=VALUE" in result.output


# ---------------------------------------------------------------------------
# Importing logkit imports no web framework
# ---------------------------------------------------------------------------


def test_import_logkit_imports_no_framework() -> None:
    code = (
        "import sys; import celery, kombu.utils.json; before = set(sys.modules)\n"
        "import logkit, logkit.asgi, logkit.wsgi, logkit._request\n"
        "new = set(sys.modules) - before\n"
        "bad = [m for m in new if m.split('.')[0] in "
        "('django', 'flask', 'starlette', 'fastapi', 'werkzeug', 'uvicorn')]\n"
        "print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_missing_framework_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['flask'] = None; sys.modules['django'] = None\n"
        "for mod in ('logkit.flask', 'logkit.django'):\n"
        "    try:\n"
        "        __import__(mod)\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "pip install 'celery-logkit[flask]'" in out
    assert "pip install 'celery-logkit[django]'" in out
