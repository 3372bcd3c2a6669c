"""Secrets that leave with the message: the ``argsrepr``/``kwargsrepr`` headers (#18).

Celery puts the repr of a task's arguments in the message headers (protocol 2), where
Flower, result backends and Celery's own log lines show them. With logkit installed
and redaction on, the publisher rewrites them: kwargs by key, positional arguments by
the name of the task's parameter. The body is never changed, so the task still gets
its real arguments -- the result (a hash of the secret) proves it.

On Redis and on RabbitMQ: the raw message is read from the broker while no worker
runs, then a worker runs the tasks and everything it wrote is searched.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from workerutil import AppModule, Worker

from logkit.redaction import REDACTED

MARK = "S3CR3T"
SECRETS = {"password": f"pw-{MARK}-1", "token": f"tk-{MARK}-2", "api_key": f"ak-{MARK}-3"}

BODY = """
import hashlib
import logging

import logkit

logkit.install(app, format="json", log_args=True)
log = logging.getLogger("charge")


def _digest(value):
    return hashlib.sha256(value.encode()).hexdigest()


@app.task
def charge(user, password, amount=1):
    log.info("charging %s", user)
    return _digest(password)


@app.task(bind=True)
def login(self, user, token, *extra, **options):
    return [_digest(token), len(extra), sorted(options)]
"""


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _raw_headers(broker: str, url: str, request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """``(headers, body)`` of every message in the ``celery`` queue, left in the queue."""
    out: list[dict[str, Any]] = []
    if broker == "redis":
        client = request.getfixturevalue("redis_server").client()
        try:
            for raw in client.lrange("celery", 0, -1):
                envelope = json.loads(raw)
                body = json.loads(base64.b64decode(envelope["body"]))
                out.append({"headers": envelope["headers"], "body": body})
        finally:
            client.close()
        return out
    from kombu import Connection

    with Connection(url, connect_timeout=10) as conn:
        channel = conn.channel()
        while (message := channel.basic_get("celery", no_ack=False)) is not None:
            out.append({"headers": dict(message.headers), "body": json.loads(message.body)})
        channel.close()  # unacknowledged: the broker puts them back in the queue
    return out


@pytest.mark.worker
@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_argsrepr_headers_are_redacted_and_the_task_gets_the_real_value(
    broker: str,
    request: pytest.FixtureRequest,
    app_factory: Callable[..., AppModule],
    worker_factory: Callable[..., Worker],
) -> None:
    url = request.getfixturevalue("redis_url" if broker == "redis" else "amqp_url")
    appmod = app_factory(BODY, broker_url=url)
    mod = appmod.load()
    if broker == "amqp":  # no worker yet: declare the queue the messages wait in
        with mod.app.connection_for_write() as conn:
            mod.app.amqp.queues[mod.app.conf.task_default_queue](conn.default_channel).declare()
    pw, tk, ak = SECRETS["password"], SECRETS["token"], SECRETS["api_key"]
    results = [
        mod.charge.delay("alice", pw),  # positional, matched to `password`
        mod.charge.delay("bob", password=pw, amount=3),  # keyword
        mod.login.delay("carol", tk, "x", api_key=ak, profile={"secret": pw}),  # bind=True
    ]

    messages = _raw_headers(broker, url, request)
    assert len(messages) == 3, messages
    headers = [m["headers"] for m in messages]
    raw = json.dumps(headers)
    found = raw.count(MARK)
    print(f"[{broker}] broker headers: secrets found {found}")
    assert found == 0, raw
    by_id = {h["id"]: h for h in headers}
    first, second, third = (by_id[r.id] for r in results)
    assert first["argsrepr"] == f"('alice', '{REDACTED}')"
    assert second["argsrepr"] == "('bob',)"
    assert second["kwargsrepr"] == f"{{'password': '{REDACTED}', 'amount': 3}}"
    assert third["argsrepr"] == f"('carol', '{REDACTED}', 'x')"
    assert third["kwargsrepr"] == (
        f"{{'api_key': '{REDACTED}', 'profile': {{'secret': '{REDACTED}'}}}}"
    )
    # the body is untouched: the worker gets the real arguments
    bodies = json.dumps([m["body"] for m in messages])
    assert bodies.count(MARK) == 5

    worker = worker_factory(appmod, logfile="worker.log", loglevel="DEBUG")
    assert results[0].get(timeout=30) == _digest(pw)
    assert results[1].get(timeout=30) == _digest(pw)
    assert results[2].get(timeout=30) == [_digest(tk), 1, ["api_key", "profile"]]
    worker.stop(timeout=15)

    text = worker.read_log() + worker.stdout() + worker.stderr()
    leaks = [line for line in text.splitlines() if MARK in line]
    print(f"[{broker}] worker output: {len(text.splitlines())} lines, secrets found {len(leaks)}")
    assert leaks == [], "\n".join(leaks[:5])
    records = worker.json_lines()
    args = {r["task_id"]: r["args"] for r in records if r.get("logger") == "charge"}
    assert args == {results[0].id: f"['alice', '{REDACTED}']", results[1].id: "['bob']"}


def test_positional_redaction_by_parameter_name() -> None:
    from celery import Celery

    from logkit.redaction import parameter_names, redact_positional

    app = Celery("unit", set_as_current=False)

    @app.task(name="unit.charge")
    def charge(user: str, password: str, *rest: Any, **kw: Any) -> None: ...

    @app.task(name="unit.bound", bind=True)
    def bound(self: Any, secret_code: str) -> None: ...

    keys = frozenset({"password", "secret"})
    assert parameter_names(charge) == (("user", "password"), "rest")
    assert redact_positional(charge, ("a", "b", "c"), keys) == ["a", REDACTED, "c"]
    assert redact_positional(bound, ("x",), keys) == [REDACTED]
    assert redact_positional(charge, ("a", "b"), frozenset()) == ["a", "b"]
