"""Tests of what the shop's tasks log, with logkit's ``logkit_records`` fixture."""

import logging

import pytest
from shop.tasks import PaymentDeclined, charge

import logkit


@pytest.fixture
def eager(celery_app):
    celery_app.conf.task_always_eager = True
    return celery_app


def test_eager_task_logs_events_with_context(eager, logkit_records):
    with logkit.bound(request_id="req-1"):
        result = charge.delay(7, 100, password="hunter2")
    assert result.get() == {"order_id": 7, "charged": 100}

    records = logkit_records.filter(task_id=result.id)
    assert [r.get("event") for r in records.events()] == ["task_started", "task_succeeded"]
    assert all(r["request_id"] == "req-1" for r in records)
    line = records.assert_logged(logger="shop.tasks", level="INFO", message="charging order 7")
    assert line["amount"] == 100
    assert line["task_name"] == "shop.charge"
    # the password kwarg is in the task's context, redacted, and nowhere in clear
    assert "[REDACTED]" in line["kwargs"]
    assert "hunter2" not in logkit_records.text()


def test_eager_failure_is_an_event_with_the_exception(eager, logkit_records):
    result = charge.apply(args=(8, 0))  # not raised (task_eager_propagates is off)
    assert result.failed()
    failed = logkit_records.assert_logged(
        event="task_failed", level=logging.ERROR, exception__type="shop.tasks.PaymentDeclined"
    )
    assert failed["exception"]["message"] == "amount must be positive, got 0"
    logkit_records.assert_not_logged(event="task_succeeded")


def test_eager_failure_raised_to_the_test(eager, logkit_records):
    eager.conf.task_eager_propagates = True  # the exception reaches the caller
    with pytest.raises(PaymentDeclined):
        charge.delay(12, 0)
    # the task failed, once; the test has the exception and its traceback
    failed = logkit_records.assert_logged(event="task_failed", propagated=True, level="INFO")
    assert failed["exception"]["type"] == "shop.tasks.PaymentDeclined"
    logkit_records.assert_not_logged(event="task_internal_error")


def test_worker_carries_request_id_from_publisher(celery_app, celery_worker, logkit_records):
    with logkit.bound(request_id="req-2"):
        result = charge.delay(9, 250, password="hunter2")
    assert result.get(timeout=10) == {"order_id": 9, "charged": 250}

    # task_succeeded is logged at task_postrun, just after the result is stored
    done = logkit_records.wait_for(event="task_succeeded", task_id=result.id)
    assert done["request_id"] == "req-2"
    assert done["result"] == "{'order_id': 9, 'charged': 250}"
    task_lines = logkit_records.filter(task_id=result.id)
    assert {r["request_id"] for r in task_lines} == {"req-2"}
    # one worker, one name: the embedded worker's, on task_received and the task's lines
    assert {r["worker"] for r in task_lines} == {celery_worker.hostname}
    assert "charging order 9" in task_lines.messages()
    assert "hunter2" not in logkit_records.text()


def test_worker_failure(celery_app, celery_worker, logkit_records):
    result = charge.delay(10, -5)
    with pytest.raises(PaymentDeclined):
        result.get(timeout=10)
    logkit_records.wait_for(
        event="task_failed", task_id=result.id, exception__message=lambda m: "got -5" in m
    )


def test_level_filter(eager):
    from logkit.testing import capture

    with capture(level="WARNING") as records:
        charge.delay(11, 1)
    assert records.filter(level="INFO") == []
