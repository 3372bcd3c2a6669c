"""Issue #3: task context on every record, isolation per pool, publisher propagation.

The real-worker part runs ONE workflow per pool (module-scoped worker + module-scoped
run) and many tests read the same log file:

* a web-like publisher binds ``request_id`` and calls a chain of three tasks, a group
  of four overlapping tasks, a chord, a task that publishes a subtask, a task that
  runs another one eagerly, a task that retries and one that fails;
* every task logs through a stdlib logger, a ``get_task_logger`` logger and a
  structlog logger, and writes what Celery itself says about it (``self.request``)
  to ``truth/<tag>.json``: that file, not logkit, is the source of the expected ids;
* a ``task_postrun`` receiver connected after logkit's logs a probe record, which
  must carry no task field and no propagated key.

The eager and API parts run in-process.
"""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery_versions import APPLY_HAS_NO_LINEAGE
from workerutil import AppModule, Worker, make_app, start_worker, wait_for

import logkit
from logkit import context
from logkit.config import CONTEXT_FIELDS, LogConfig
from logkit.formatters import JsonFormatter
from logkit.receivers import HEADER, TaskContext
from logkit.redaction import redact

TASK_FIELDS = frozenset(CONTEXT_FIELDS) | {"args", "kwargs"}

APP_BODY = r"""
import json
import logging
import os
import time

import structlog
from celery import signals
from celery.utils.log import get_task_logger

import logkit

logkit.install(
    app,
    format="json",
    log_args=True,
    args_max_length=300,
    redact_keys=["password", "token", "api_key", "ssn"],
    propagate=["request_id", "tenant"],
)

std = logging.getLogger("ctx.lib")
tlog = get_task_logger("ctx.tasks")
slog = structlog.get_logger("ctx.sl")
TRUTH = os.path.join(WORKDIR, "truth")
os.makedirs(TRUTH, exist_ok=True)


def _truth(task, tag, **more):
    req = task.request
    data = {
        "tag": tag, "id": req.id, "name": task.name, "parent_id": req.parent_id,
        "root_id": req.root_id, "retries": req.retries, "hostname": req.hostname,
        "pid": os.getpid(), "context": logkit.get_context(),
        "header": getattr(req, "logkit_context", None), **more,
    }
    tmp = os.path.join(TRUTH, f".{tag}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, default=repr)
    os.replace(tmp, os.path.join(TRUTH, f"{tag}.json"))


def _log_all(tag):
    std.info("std %s", tag)
    tlog.info("tlog %s", tag)
    slog.info("slog", tag=tag)


@app.task(bind=True)
def work(self, tag, sleep=0.0):
    start = time.time()
    _log_all(tag)
    time.sleep(sleep)
    std.info("std-late %s", tag)
    _truth(self, tag, start=start, end=time.time())
    return tag


@app.task(bind=True)
def collect(self, results, tag):
    _log_all(tag)
    _truth(self, tag)
    return results


@app.task(bind=True)
def spawn(self, tag):
    _log_all(tag)
    _truth(self, tag)
    with logkit.bound(tenant="acme"):  # bound inside a task: propagates onward too
        work.delay(tag + "-child")
    return tag


@app.task(bind=True)
def nested(self, tag):
    _log_all(tag)
    work.apply(args=(tag + "-inner",))
    std.info("std-after %s", tag)
    _truth(self, tag)
    return tag


@app.task(bind=True, max_retries=2, default_retry_delay=0)
def flaky(self, tag):
    tag = f"{tag}-try{self.request.retries}"
    _log_all(tag)
    _truth(self, tag)
    if self.request.retries < 1:
        raise self.retry(countdown=0)
    return tag


@app.task(bind=True)
def fail(self, tag):
    _log_all(tag)
    _truth(self, tag)
    raise ValueError("boom " + tag)


@app.task(bind=True)
def secret(self, user, long_arg, password=None, profile=None):
    _log_all("secret")
    _truth(self, "secret")
    return "ok"


@signals.task_postrun.connect(weak=False)
def _probe(task_id=None, **kwargs):
    # connected after logkit.install(): runs after logkit cleared the task's context
    logging.getLogger("ctx.probe").info(
        "postrun probe", extra={"probe_for": task_id, "left_bound": logkit.get_context()}
    )
"""

#: pool -> concurrency. Each pool gets one worker for the whole module.
POOLS = {"prefork": 2, "threads": 4, "solo": 1, "gevent": 4, "eventlet": 4}
#: Extra runs on a real redis broker + result backend (native chord counting: the chord
#: callback is published by the last header task, not by celery.chord_unlock).
REDIS_RUNS = {"prefork-redis": "prefork", "threads-redis": "threads"}
#: The same over AMQP (a real rabbitmq-server; file:// result backend, so chord_unlock).
AMQP_RUNS = {"prefork-amqp": "prefork"}


def _pool_skip_reason(pool: str) -> str | None:
    if pool in ("gevent", "eventlet") and importlib.util.find_spec(pool) is None:
        return f"the {pool} pool needs the {pool!r} package (pip install {pool})"
    return None


class Run:
    """One workflow's outcome: the worker's records and what each task said about itself."""

    def __init__(
        self, worker: Worker, appmod: AppModule, pool: str, results: dict[str, Any], redis: bool
    ):
        self.redis = redis
        self.worker = worker
        self.appmod = appmod
        self.pool = pool
        self.results = results
        self.records = worker.json_lines()
        self.truth: dict[str, dict[str, Any]] = {
            p.stem: json.loads(p.read_text()) for p in (appmod.workdir / "truth").glob("*.json")
        }

    def by_logger(self, *names: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["logger"] in names]

    def tagged(self) -> list[tuple[str, dict[str, Any]]]:
        """``(tag, record)`` for every record our tasks logged (any of the three loggers)."""
        out = []
        for rec in self.records:
            if rec["logger"] in ("ctx.lib", "ctx.tasks"):
                out.append((rec["message"].split(" ", 1)[1], rec))
            elif rec["logger"] == "ctx.sl":
                out.append((rec["tag"], rec))
        return out


@pytest.fixture(scope="module", params=[*POOLS, *REDIS_RUNS, *AMQP_RUNS])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    name = request.param
    pool = REDIS_RUNS.get(name) or AMQP_RUNS.get(name, name)
    broker_url = None
    if name in AMQP_RUNS:
        from rabbitmqutil import delete_queues

        broker_url = request.getfixturevalue("rabbitmq_server").url
        delete_queues(broker_url, ("celery",))
    if name in REDIS_RUNS:
        server = request.getfixturevalue("redis_server")
        import redis

        db = 1 + list(REDIS_RUNS).index(name)  # db 0 belongs to the redis_url fixture
        client = redis.Redis(host="127.0.0.1", port=server.port, db=db)
        client.flushdb()
        client.close()
        broker_url = f"redis://127.0.0.1:{server.port}/{db}"
    reason = _pool_skip_reason(pool)
    if reason:
        pytest.skip(reason)
    appmod = make_app(tmp_path_factory.mktemp(f"ctx-{name}"), APP_BODY, broker_url=broker_url)
    worker = start_worker(appmod, pool=pool, concurrency=POOLS[pool], logfile="worker.log")
    try:
        mod = appmod.load()
        results: dict[str, Any] = {}
        from celery import chain, chord, group

        # Outside any binding: no propagated context at all.
        plain = mod.work.delay("plain")
        with logkit.bound(request_id="req-chain", local_only="never-sent"):
            wf_chain = chain(
                mod.work.si("chain-0"), mod.work.si("chain-1"), mod.work.si("chain-2")
            ).apply_async()
        with logkit.bound(request_id="req-group"):
            wf_group = group(mod.work.si(f"group-{i}", sleep=0.4) for i in range(4)).apply_async()
        with logkit.bound(request_id="req-chord"):
            wf_chord = chord(
                [mod.work.si("chord-0"), mod.work.si("chord-1")], mod.collect.s(tag="chord-cb")
            ).apply_async()
        with logkit.bound(request_id="req-misc", tenant="t1"):
            spawned = mod.spawn.delay("spawn")
            nested = mod.nested.delay("nested")
            flaky = mod.flaky.delay("flaky")
            failed = mod.fail.delay("fail")
            secret = mod.secret.delay(
                "bob",
                "x" * 5000,
                password="hunter2",
                profile={"API_KEY": "k-123", "ssn": "078-05-1120", "name": "Bob"},
            )
        assert logkit.get_context() == {}
        results["plain"] = plain.get(timeout=60)
        results["chain"] = wf_chain.get(timeout=60)
        results["group"] = wf_group.get(timeout=60)
        results["chord"] = wf_chord.get(timeout=60)
        results["spawn"] = spawned.get(timeout=60)
        results["nested"] = nested.get(timeout=60)
        results["flaky"] = flaky.get(timeout=60)
        with pytest.raises(ValueError, match="boom fail"):
            failed.get(timeout=60)
        results["secret"] = secret.get(timeout=60)

        expected_tags = {
            "plain", "chain-0", "chain-1", "chain-2", "group-0", "group-1", "group-2",
            "group-3", "chord-0", "chord-1", "chord-cb", "spawn", "spawn-child", "nested",
            "nested-inner", "flaky-try0", "flaky-try1", "fail", "secret",
        }  # fmt: skip

        def complete() -> bool:
            truth_dir = appmod.workdir / "truth"
            truth = {p.stem: json.loads(p.read_text()) for p in truth_dir.glob("*.json")}
            if set(truth) != expected_tags:
                return False
            # every run's postrun probe is written (a retried task: one per attempt, under
            # one id): nothing more to come
            runs = Counter(t["id"] for t in truth.values())
            probed = Counter(r["probe_for"] for r in worker.json_lines() if "probe_for" in r)
            return all(probed[task_id] >= n for task_id, n in runs.items())

        wait_for(complete, timeout=30, message=lambda: worker.describe())
        yield Run(worker, appmod, pool, results, redis=name in REDIS_RUNS)
    finally:
        worker.stop(timeout=15)
        appmod.unload()


# ---------------------------------------------------------------------------
# real workers
# ---------------------------------------------------------------------------


@pytest.mark.worker
def test_workflow_results(run: Run) -> None:
    assert run.results["chain"] == "chain-2"
    assert run.results["group"] == [f"group-{i}" for i in range(4)]
    assert run.results["chord"] == ["chord-0", "chord-1"]
    assert run.results["flaky"] == "flaky-try1"


@pytest.mark.worker
def test_every_task_record_has_its_own_task_fields(run: Run) -> None:
    tagged = run.tagged()
    # 3 loggers x every tag, plus the late stdlib lines of `work`
    assert len(tagged) >= 3 * 19, [r["message"] for _, r in tagged]
    for tag, rec in tagged:
        truth = run.truth[tag.split()[0]]
        where = f"{tag}: {rec}"
        assert rec["task_id"] == truth["id"], where
        assert rec["task_name"] == truth["name"], where
        parent_id, root_id = truth["parent_id"], truth["root_id"]
        if tag.startswith("nested-inner") and APPLY_HAS_NO_LINEAGE:
            # Celery < 5.6 leaves them out of the request: logkit's come from the caller
            assert (parent_id, root_id) == (None, None), truth
            nested = run.truth["nested"]
            parent_id, root_id = nested["id"], nested["root_id"]
        assert rec.get("parent_id") == parent_id, where
        # root_id only where it is not the task's own id (#37): a root task's lines say
        # it by leaving it out; retries only after a retry
        assert rec.get("root_id") == (None if root_id == truth["id"] else root_id), where
        assert rec.get("retries") == (truth["retries"] or None), where
        # one worker, one value (#39): the node name, also for a task applied eagerly
        # inside another (Celery's request names only the host there; its caller's worker)
        assert rec["worker"] == run.worker.hostname, where
        # Celery's correlation_id is the task id: left out (#37)
        assert "correlation_id" not in rec, where
        if not tag.startswith("nested-inner"):
            assert truth["hostname"] == run.worker.hostname, where
            assert rec["queue"] == "celery", where
        else:
            assert "queue" not in rec, where


def _root_query(records: list[dict[str, Any]], root: str) -> list[dict[str, Any]]:
    """``root_id:ROOT OR task_id:ROOT``: the query docs/records.md gives for a workflow."""
    return [r for r in records if root in (r.get("root_id"), r.get("task_id"))]


@pytest.mark.worker
def test_one_query_finds_every_line_of_a_workflow_and_of_a_task(run: Run) -> None:
    """With ``root_id`` left out on a root task, ``root_id:X OR task_id:X`` still finds
    every line of the workflow started by X (its tasks' own lines and their lifecycle
    events, in the worker's main process too) and nothing else; ``task_id:X`` every
    line of one task. What each task is comes from Celery (truth files), not logkit."""
    truth = run.truth
    by_task: dict[str, list[dict[str, Any]]] = {}
    for rec in run.records:
        if "task_id" in rec:
            by_task.setdefault(rec["task_id"], []).append(rec)
    roots: dict[str, set[str]] = {}  # root id -> the ids of the workflow's tasks
    for tag, t in truth.items():
        root = t["root_id"] or (truth["nested"]["root_id"] if tag == "nested-inner" else None)
        roots.setdefault(root or t["id"], set()).add(t["id"])
    chain_root = truth["chain-0"]["id"]
    assert roots[chain_root] == {truth[f"chain-{i}"]["id"] for i in range(3)}
    assert roots[truth["spawn"]["id"]] == {truth["spawn"]["id"], truth["spawn-child"]["id"]}
    ours = {t["id"] for t in truth.values()}
    for root, members in roots.items():
        found = _root_query(run.records, root)
        # every line of the workflow's tasks, and of no other task of ours (Celery's own
        # chord_unlock task, run for a chord on the file backend, belongs to it too)
        assert [r for r in found if r["task_id"] in ours] == [
            r for r in run.records if r.get("task_id") in members], root
        assert {r["task_id"] for r in found} & ours == members, root
        assert {r["task_name"] for r in found if r["task_id"] not in ours} <= {
            "celery.chord_unlock"}, root
    for tag, t in truth.items():
        lines = by_task[t["id"]]
        if tag != "nested-inner":  # apply(): no message, so no task_received
            # the main process's task_received is found by the task id too
            assert "task_received" in {r.get("event") for r in lines}, tag
        assert len([r for r in lines if r["logger"] in ("ctx.lib", "ctx.tasks", "ctx.sl")
                    and tag in (r.get("tag"), r["message"].partition(" ")[2])]) >= 3, tag
    # the chain's links: the root's lines have no root_id, the children's have the root's
    first = by_task[chain_root]
    assert first and all("root_id" not in r for r in first)
    for i in (1, 2):
        child = by_task[truth[f"chain-{i}"]["id"]]
        assert child and all(r["root_id"] == chain_root for r in child), child
        assert all(r["parent_id"] == truth[f"chain-{i - 1}"]["id"] for r in child)


@pytest.mark.worker
def test_workflow_structure_is_what_celery_says(run: Run) -> None:
    t = run.truth
    # chain: one root, each link's parent is the previous link
    assert t["chain-1"]["parent_id"] == t["chain-0"]["id"]
    assert t["chain-2"]["parent_id"] == t["chain-1"]["id"]
    assert {t[f"chain-{i}"]["root_id"] for i in range(3)} == {t["chain-0"]["id"]}
    # subtask published from a task; eager apply() inside a task
    assert t["spawn-child"]["parent_id"] == t["spawn"]["id"]
    assert t["spawn-child"]["root_id"] == t["spawn"]["root_id"]
    if APPLY_HAS_NO_LINEAGE:  # Celery < 5.6 (logkit's records carry them: test above)
        assert (t["nested-inner"]["parent_id"], t["nested-inner"]["root_id"]) == (None, None)
    else:
        assert t["nested-inner"]["parent_id"] == t["nested"]["id"]
        assert t["nested-inner"]["root_id"] == t["nested"]["root_id"]
    # retry: the re-published message keeps the task id
    assert t["flaky-try1"]["id"] == t["flaky-try0"]["id"]
    assert t["flaky-try1"]["retries"] == 1
    # chord callback: published by celery.chord_unlock (file backend) or, with redis's
    # native counting, by the header task that finished last
    header_ids = {t["chord-0"]["id"], t["chord-1"]["id"]}
    assert (t["chord-cb"]["parent_id"] in header_ids) is run.redis


@pytest.mark.worker
def test_publisher_context_travels_to_every_task(run: Run) -> None:
    expected = {
        "plain": None,
        **{f"chain-{i}": "req-chain" for i in range(3)},
        **{f"group-{i}": "req-group" for i in range(4)},
        "chord-0": "req-chord",
        "chord-1": "req-chord",
        "chord-cb": "req-chord",  # published by the worker (chord_unlock / last header task)
        "spawn": "req-misc",
        "spawn-child": "req-misc",  # subtask published from inside a task
        "nested": "req-misc",
        "nested-inner": "req-misc",
        "flaky-try0": "req-misc",
        "flaky-try1": "req-misc",  # the retry's new message carries it again
        "fail": "req-misc",
        "secret": "req-misc",
    }
    seen = set()
    for tag, rec in run.tagged():
        key = tag.split()[0]
        seen.add(key)
        assert rec.get("request_id") == expected[key], f"{tag}: {rec}"
        # only configured keys propagate (propagate=["request_id", "tenant"])
        assert "local_only" not in rec, rec
        if expected[key] == "req-misc" and key != "spawn-child":
            assert rec.get("tenant") == "t1", rec
    assert seen == set(expected)
    # bound inside `spawn` around .delay(): overrides the inherited tenant for the child only
    child = [r for tag, r in run.tagged() if tag == "spawn-child"]
    assert child and all(r["tenant"] == "acme" for r in child)
    assert all(r["tenant"] == "t1" for tag, r in run.tagged() if tag == "spawn")
    # the message header arrives as task.request.logkit_context (protocol 2), also for
    # messages published by the worker (the chain's next link) and for retries
    assert run.truth["chain-0"]["header"] == {"request_id": "req-chain"}
    assert run.truth["chain-2"]["header"] == {"request_id": "req-chain"}
    assert run.truth["flaky-try1"]["header"] == {"request_id": "req-misc", "tenant": "t1"}
    assert run.truth["spawn-child"]["header"] == {"request_id": "req-misc", "tenant": "acme"}
    assert run.truth["plain"]["header"] is None
    # what the task itself sees through the public API
    assert run.truth["chain-1"]["context"]["request_id"] == "req-chain"
    assert run.truth["chain-1"]["context"]["task_id"] == run.truth["chain-1"]["id"]


@pytest.mark.worker
def test_records_outside_tasks_carry_no_task_fields(run: Run) -> None:
    inside = {"ctx.lib", "ctx.tasks", "ctx.sl"}
    outside = [r for r in run.records if r["logger"] not in inside]
    inner_id = run.truth["nested-inner"]["id"]
    probes = [r for r in run.by_logger("ctx.probe") if r["probe_for"] != inner_id]
    assert len(probes) >= 18  # 18 runs of our tasks (+ chord_unlock on the file backend)
    for rec in probes:
        # task_postrun receivers after logkit's: nothing of the task is left bound
        assert rec["left_bound"] == {}, rec
        assert TASK_FIELDS.isdisjoint(rec), rec
        assert "request_id" not in rec and "tenant" not in rec, rec
    # logkit's lifecycle events carry their own task's identity by design; everything
    # else logged outside a task (consumer, kombu...) carries no task field at all
    # else carries either a whole task context (logged inside a task, e.g. kombu while a
    # chain publishes its next link) or nothing of one
    plain = [r for r in outside if not r["logger"].startswith(("logkit.", "ctx."))]
    connected = [r for r in plain if r["message"].startswith("Connected to")]
    assert connected and all("task_id" not in r for r in connected)
    for rec in plain:
        if "task_id" not in rec:
            assert TASK_FIELDS.isdisjoint(rec) and "request_id" not in rec, rec
        else:
            assert rec["task_name"] and "request_id" in rec, rec


@pytest.mark.worker
def test_eager_apply_inside_a_task_restores_the_callers_context(run: Run) -> None:
    outer = run.truth["nested"]
    after = [r for r in run.by_logger("ctx.lib") if r["message"] == "std-after nested"]
    assert len(after) == 1
    assert after[0]["task_id"] == outer["id"]
    assert after[0]["task_name"].endswith(".nested")
    assert after[0]["queue"] == "celery"  # the outer task's field, back again
    # the postrun probe of the eager inner task runs inside the outer task: outer's context
    inner_probe = [
        r for r in run.by_logger("ctx.probe") if r["probe_for"] == run.truth["nested-inner"]["id"]
    ]
    assert len(inner_probe) == 1
    assert inner_probe[0]["task_id"] == outer["id"]
    assert inner_probe[0]["left_bound"]["task_id"] == outer["id"]


@pytest.mark.worker
def test_failed_and_retried_tasks_are_cleared(run: Run) -> None:
    fail_id = run.truth["fail"]["id"]
    flaky_id = run.truth["flaky-try0"]["id"]
    probes = {r["probe_for"]: r for r in run.by_logger("ctx.probe")}
    assert fail_id in probes and flaky_id in probes
    # Celery's own error record for the failure is inside the task: it has the context
    errors = [r for r in run.records if r["level"] == "ERROR" and r.get("task_id") == fail_id]
    assert errors, "the failure is logged with the failed task's context"
    assert errors[0]["request_id"] == "req-misc"


@pytest.mark.worker
def test_concurrent_tasks_never_see_each_others_ids(run: Run) -> None:
    group = [run.truth[f"group-{i}"] for i in range(4)]
    spans = sorted((t["start"], t["end"]) for t in group)
    overlapping = any(b[0] < a[1] for a, b in itertools.pairwise(spans))
    if POOLS[run.pool] > 1:
        assert overlapping, f"{run.pool}: group tasks did not run concurrently: {spans}"
    else:
        assert not overlapping
    # the late line is logged after 0.4 s of sleep, when the others have started
    for t in group:
        late = [r for r in run.by_logger("ctx.lib") if r["message"] == f"std-late {t['tag']}"]
        assert len(late) == 1
        assert late[0]["task_id"] == t["id"]
        assert late[0]["process"] == t["pid"]


@pytest.mark.worker
def test_args_and_kwargs_are_redacted_and_capped(run: Run) -> None:
    recs = [r for tag, r in run.tagged() if tag == "secret"]
    assert len(recs) == 3
    for rec in recs:
        assert rec["args"].startswith("['bob', 'xxx")
        assert rec["args"].endswith("chars]")  # args_max_length=300
        assert len(rec["args"]) < 400
        kwargs = rec["kwargs"]
        assert "'password': '[REDACTED]'" in kwargs
        assert "'API_KEY': '[REDACTED]'" in kwargs  # case-insensitive, nested
        assert "'ssn': '[REDACTED]'" in kwargs  # configured key
        assert "'name': 'Bob'" in kwargs
    text = run.worker.read_log()
    for secret in ("hunter2", "k-123", "078-05-1120"):
        assert secret not in text
    # other tasks get their own (harmless) args
    chain0 = [r for tag, r in run.tagged() if tag == "chain-0"]
    assert chain0[0]["args"] == "['chain-0']"


# ---------------------------------------------------------------------------
# in-process: eager execution and the API
# ---------------------------------------------------------------------------


class _Capture(logging.Handler):
    """Keeps (message, context at emit time, JSON line) for each record."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.rows: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.json = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        line = json.loads(self.json.format(record))
        self.rows.append((record.getMessage(), logkit.get_context(), line))


@pytest.fixture
def eager_app() -> Iterator[tuple[Celery, _Capture]]:
    app = Celery("eager_ctx", set_as_current=False)
    app.conf.task_always_eager = True
    logkit.install(app, format="json")
    capture = _Capture()
    log = logging.getLogger("eager")
    log.addHandler(capture)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        yield app, capture
    finally:
        log.removeHandler(capture)
        logkit.clear()


def test_eager_tasks_bind_and_restore(eager_app: tuple[Celery, _Capture]) -> None:
    app, capture = eager_app
    log = logging.getLogger("eager")

    @app.task(bind=True)
    def inner(self: Any) -> str:
        log.info("inner")
        return str(self.request.id)

    @app.task(bind=True)
    def outer(self: Any) -> str:
        log.info("outer-before")
        inner.apply()
        inner.delay()  # always_eager: apply() too
        log.info("outer-after")
        return str(self.request.id)

    @app.task(bind=True)
    def broken(self: Any) -> None:
        log.info("broken")
        raise RuntimeError("nope")

    with logkit.bound(request_id="r1"):
        outer_id = outer.apply().get()
        log.info("publisher")
    with pytest.raises(RuntimeError):
        broken.apply(throw=True)
    log.info("after all")

    rows = {msg: (ctx, line) for msg, ctx, line in capture.rows}
    ctx, line = rows["outer-after"]
    assert ctx["task_id"] == outer_id and ctx["request_id"] == "r1"
    assert line["task_id"] == outer_id and line["task_name"].endswith("outer")
    inners = [(c, ln) for m, c, ln in capture.rows if m == "inner"]
    assert len(inners) == 2
    for ctx, line in inners:
        assert ctx["parent_id"] == outer_id and ctx["task_id"] != outer_id
        assert ctx["request_id"] == "r1"
        assert line["task_name"].endswith("inner")
    assert rows["publisher"][0] == {"request_id": "r1"}
    assert rows["broken"][0]["task_name"].endswith("broken")
    assert rows["after all"][0] == {}
    assert "task_id" not in rows["after all"][1]
    assert logkit.get_context() == {}


def test_eager_retry_leaves_nothing_bound(eager_app: tuple[Celery, _Capture]) -> None:
    app, capture = eager_app
    log = logging.getLogger("eager")

    @app.task(bind=True, max_retries=2, default_retry_delay=0)
    def flaky(self: Any) -> int:
        log.info("try %s", self.request.retries)
        if self.request.retries < 2:
            raise self.retry()
        return int(self.request.retries)

    assert flaky.apply().get() == 2
    assert logkit.get_context() == {}
    tries = [(m, c) for m, c, _ in capture.rows if m.startswith("try")]
    assert [m for m, _ in tries] == ["try 0", "try 1", "try 2"]
    assert [c.get("retries") for _, c in tries] == [None, 1, 2]  # 0: left out (#37)


def test_threads_keep_their_own_context() -> None:
    barrier = threading.Barrier(4)
    seen: dict[int, list[dict[str, Any]]] = {}

    def worker(n: int) -> None:
        with logkit.bound(n=n):
            barrier.wait()
            seen[n] = [logkit.get_context()]
            logkit.bind(extra=n)
            barrier.wait()
            seen[n].append(logkit.get_context())
        seen[n].append(logkit.get_context())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(4):
        assert seen[n][0] == {"n": n}
        assert seen[n][1] == {"n": n, "extra": n}
        assert seen[n][2] == {}  # bound() restores what was there before it (nothing)
    assert logkit.get_context() == {}


def test_bind_unbind_bound_get_context() -> None:
    try:
        assert logkit.get_context() == {}
        logkit.bind(a=1, b=2)
        snapshot = logkit.get_context()
        snapshot["mutated"] = True  # a copy: does not change the context
        assert logkit.get_context() == {"a": 1, "b": 2}
        logkit.unbind("a", "missing")
        assert logkit.get_context() == {"b": 2}
        with logkit.bound(c=3, b=20) as ctx:
            assert ctx == {"b": 20, "c": 3}
            assert logkit.get_context() == {"b": 20, "c": 3}
        assert logkit.get_context() == {"b": 2}
        with pytest.raises(KeyError), logkit.bound(d=4):
            raise KeyError("x")
        assert logkit.get_context() == {"b": 2}
    finally:
        logkit.clear()
    assert logkit.get_context() == {}


def test_context_reaches_json_console_and_plain_output() -> None:
    from logkit.formatters import ConsoleFormatter, PlainFormatter

    record = logging.LogRecord("lib", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    scope = context.TaskScope()
    scope.enter("tid-1", {"task_id": "tid-1", "task_name": "app.add", "request_id": "r9"})
    try:
        line = json.loads(JsonFormatter().format(record))
        console = ConsoleFormatter().format(record)
        plain = PlainFormatter("%(levelname)s %(message)s").format(record)
        task_plain = PlainFormatter("%(task_name)s[%(task_id)s]: %(message)s").format(record)
    finally:
        scope.exit("tid-1")
    assert line["task_id"] == "tid-1" and line["request_id"] == "r9"
    assert "[app.add tid-1] hello x" in console and "request_id=r9" in console
    assert plain == "INFO [app.add tid-1] hello x request_id=r9"
    assert task_plain == "app.add[tid-1]: hello x request_id=r9"
    assert logkit.get_context() == {}
    fresh = logging.LogRecord("lib", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    assert PlainFormatter("%(task_name)s[%(task_id)s]: %(message)s").format(fresh) == (
        "???[???]: hello x"
    )


# ---------------------------------------------------------------------------
# TaskContext: field choice, names, args and propagation (unit)
# ---------------------------------------------------------------------------


class _Req:
    id = "tid"
    parent_id = "pid"
    root_id = "rid"
    retries = 2
    hostname = "w1@host"
    correlation_id = "tid"
    delivery_info = {"routing_key": "rk", "exchange": ""}


class _Task:
    name = "app.t"
    request = _Req()


def test_task_context_default_fields() -> None:
    tc = TaskContext(LogConfig())
    # correlation_id is the task id (as Celery sets it): left out, it says the same (#37)
    assert tc.for_task(_Task()) == {
        "task_id": "tid",
        "task_name": "app.t",
        "parent_id": "pid",
        "root_id": "rid",
        "retries": 2,
        "worker": "w1@host",
        "queue": "rk",
    }


class _RootReq(_Req):
    """A root task's first run: no parent, its own id as root and correlation id."""

    parent_id = None
    root_id = "tid"
    retries = 0


class _RootTask(_Task):
    request = _RootReq()


ALL_EIGHT = {"task_id": "tid", "task_name": "app.t", "root_id": "tid", "retries": 0,
             "worker": "w1@host", "queue": "rk", "correlation_id": "tid"}


@pytest.mark.parametrize(("always", "kept"), [
    ((), set()),
    (("root_id",), {"root_id"}),
    (("correlation_id", "retries"), {"correlation_id", "retries"}),
    ("*", {"root_id", "correlation_id", "retries"}),
])
def test_task_context_leaves_out_what_repeats_the_task_id(always: Any, kept: set[str]) -> None:
    """#37: on a root task's first run ``root_id`` and ``correlation_id`` are the task id
    and ``retries`` is 0; each is left out unless ``always_fields`` names it. A null
    ``parent_id`` is never written."""
    values = TaskContext(LogConfig(always_fields=always)).for_task(_RootTask())
    assert values == {k: v for k, v in ALL_EIGHT.items()
                      if k not in {"root_id", "correlation_id", "retries"} or k in kept}


def test_task_context_keeps_root_and_correlation_ids_without_the_task_id() -> None:
    """Without ``task_id`` among the context fields nothing else says the id: ``root_id``
    and ``correlation_id`` stay, equal to it or not (renamed keys alike)."""
    config = LogConfig(context_fields=("root_id", "correlation_id", "retries"),
                       field_names={"root_id": "workflow"})
    assert TaskContext(config).for_task(_RootTask()) == {"workflow": "tid",
                                                         "correlation_id": "tid"}
    other = _RootTask()
    other.request = _RootReq()
    other.request.correlation_id = "corr-1"  # type: ignore[misc]
    values = TaskContext(LogConfig()).for_task(other)
    assert values["correlation_id"] == "corr-1" and "root_id" not in values


def test_task_context_selected_and_renamed_fields_and_inherited_header() -> None:
    config = LogConfig(
        context_fields=("task_id", "task_name", "queue"),
        field_names={"task_id": "celery.task_id", "queue": "routing_key"},
    )
    task = _Task()
    task.request = _Req()
    setattr(task.request, HEADER, {"request_id": "r1"})
    values = TaskContext(config).for_task(task)
    assert values == {
        "request_id": "r1",
        "celery.task_id": "tid",
        "task_name": "app.t",
        "routing_key": "rk",
    }


@pytest.mark.parametrize("same_task", [False, True], ids=["other-task", "same-task"])
def test_an_applied_subtask_without_lineage_takes_it_from_its_caller(
    same_task: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Celery < 5.6: ``apply()`` inside a task leaves parent_id/root_id out of the request.

    Built as Celery 5.3's tracer builds it (each task on Celery's task stack, a fresh
    request on the task's request stack), with the shim's gate on
    (``logkit._compat.APPLY_HAS_NO_LINEAGE``), so it runs on every Celery; the real
    worker's check is ``nested-inner`` in the workflow above.
    """
    from celery._state import pop_current_task, push_current_task
    from celery.app.task import Context

    from logkit import _compat

    monkeypatch.setattr(_compat, "APPLY_HAS_NO_LINEAGE", True)

    app = Celery("lineage", set_as_current=False)

    @app.task(name="outer", shared=False)
    def outer() -> None: ...

    @app.task(name="inner", shared=False)
    def inner() -> None: ...

    if same_task:
        inner = outer
    tc = TaskContext(LogConfig())
    pushed = []
    try:
        for task, request in ((outer, {"id": "caller", "root_id": "root"}),
                              (inner, {"id": "sub", "is_eager": True})):
            push_current_task(task)
            task.request_stack.push(Context(**request))
            pushed.append(task)
        values = tc.for_task(inner)
        assert (values["parent_id"], values["root_id"]) == ("caller", "root")
        assert inner.request.parent_id is None  # Celery's own request is left as it is
    finally:
        for task in reversed(pushed):
            task.pop_request()
            pop_current_task()
    # top level (no calling task): nothing to take, the request is read as it is
    inner.request_stack.push(Context(id="top", is_eager=True))
    push_current_task(inner)
    try:
        values = tc.for_task(inner)
        assert not {"parent_id", "root_id"} & set(values)
    finally:
        pop_current_task()
        inner.pop_request()
    # a worker's request is taken as it is, even without them
    plain = _Task()
    plain.request = Context(id="w")
    assert not {"parent_id", "root_id"} & set(tc.for_task(plain))


def test_task_context_args_off_by_default_on_with_redaction_and_cap() -> None:
    assert "args" not in TaskContext(LogConfig()).for_task(_Task(), ["a"], {"password": "p"})
    tc = TaskContext(LogConfig(log_args=True, args_max_length=60))
    values = tc.for_task(
        _Task(), ["a" * 100], {"Password": "p", "nested": [{"Authorization": "Bearer x"}]}
    )
    assert values["args"] == "['" + "a" * 58 + "…[truncated 44 chars]"
    assert "Bearer" not in values["kwargs"] and "'p'" not in values["kwargs"]
    assert values["kwargs"].startswith("{'Password': '[REDACTED]', 'nested': [{'Authorization'")


def test_redact_is_case_insensitive_substring_and_deep() -> None:
    keys = frozenset({"token", "password"})
    data = {"access_TOKEN": "a", "user": {"Password": "b", "x": [{"token": "c"}]}, 3: "d"}
    assert redact(data, keys) == {
        "access_TOKEN": "[REDACTED]",
        "user": {"Password": "[REDACTED]", "x": [{"token": "[REDACTED]"}]},
        3: "d",
    }
    deep: Any = {}
    node = deep
    for _ in range(100):
        node["k"] = {}
        node = node["k"]
    redact(deep, keys)  # no RecursionError


def test_propagation_filters_task_fields_and_unconfigured_keys() -> None:
    ctx = {"task_id": "t", "root_id": "r", "request_id": "q", "user": object(), "n": 1}
    everything = TaskContext(LogConfig()).to_propagate(ctx)
    assert set(everything) == {"request_id", "user", "n"}
    assert everything["user"].startswith("<object object")  # JSON-safe for the message
    only = TaskContext(LogConfig(propagate=["request_id"])).to_propagate(ctx)
    assert only == {"request_id": "q"}
    assert TaskContext(LogConfig(propagate=[])).to_propagate(ctx) == {}


def test_before_task_publish_puts_context_in_headers() -> None:
    from logkit.receivers import on_before_task_publish

    app = Celery("pub_ctx", set_as_current=False)
    logkit.install(app, propagate=["request_id"])
    headers: dict[str, Any] = {}
    on_before_task_publish(headers=headers)
    assert HEADER not in headers  # nothing bound: no header
    with logkit.bound(request_id="r", other=1):
        on_before_task_publish(headers=headers)
    assert headers[HEADER] == {"request_id": "r"}


def test_logs_of_a_bound_context_in_json(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("ctx.unit")
    log.addHandler(handler)
    log.propagate = False
    try:
        with logkit.bound(request_id="abc"):
            log.warning("inside")
        log.warning("outside")
    finally:
        log.removeHandler(handler)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["request_id"] == "abc"
    assert "request_id" not in outside


def test_pool_skip_reason_is_precise() -> None:
    assert _pool_skip_reason("prefork") is None
    for pool in ("gevent", "eventlet"):
        assert _pool_skip_reason(pool) is None  # both are test dependencies: they must run


def test_same_task_id_running_twice_at_once_in_two_threads() -> None:
    """A redelivered message (e.g. redis visibility timeout) can run while the first
    delivery still runs: both executions must get their own context back."""
    scope = context.TaskScope()
    steps = [threading.Event() for _ in range(4)]
    left: dict[str, dict[str, Any]] = {}

    def run(name: str, enter_after: int, exit_after: int, done: int, exited: int) -> None:
        logkit.bind(thread=name)
        if enter_after >= 0:
            steps[enter_after].wait(5)
        scope.enter("same-id", {"task_id": "same-id", "copy": name}, frozenset({"task_id"}))
        steps[done].set()
        steps[exit_after].wait(5)
        scope.exit("same-id")
        steps[exited].set()
        left[name] = logkit.get_context()

    # order: A enters, B enters, A exits, B exits
    a = threading.Thread(target=run, args=("A", -1, 1, 0, 2))
    b = threading.Thread(target=run, args=("B", 0, 2, 1, 3))
    a.start()
    b.start()
    a.join(10)
    b.join(10)
    assert left == {"A": {"thread": "A"}, "B": {"thread": "B"}}
    assert len(scope) == 0


def test_call_bound_binds_for_the_call_and_restores_after_it_even_on_error() -> None:
    from logkit.context import call_bound, current

    seen: list[dict[str, Any]] = []
    with logkit.bound(outer=1):
        before = current()
        assert call_bound({"task_id": "t1"}, lambda arg: seen.append(dict(current())) or arg,
                          "r") == "r"
        assert seen == [{"outer": 1, "task_id": "t1"}]
        assert current() is before

        def boom(_: Any) -> None:
            raise RuntimeError("x")

        with pytest.raises(RuntimeError):
            call_bound({"task_id": "t2"}, boom, None)
        assert current() is before
