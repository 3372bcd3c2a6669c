"""A Starlette app behind logkit.asgi.RequestContextMiddleware, run by uvicorn in the tests.

Env: ``WEB_LOG`` (JSON log file of this process), ``CELERY_APP`` (the test's app module,
importable from the current directory). ``GET /work/{n}`` publishes tasks and returns
the request id the endpoint saw.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os

from celery import chain, group
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

import logkit
from logkit.asgi import RequestContextMiddleware

logkit.configure(format="json", logfile=os.environ["WEB_LOG"], loglevel="INFO")
tasks = importlib.import_module(os.environ["CELERY_APP"])
log = logging.getLogger("webapp")


def publish(n: int) -> None:
    if n % 20 == 5:
        chain(tasks.work.si(n), tasks.child.si(n)).delay()
    elif n % 20 == 15:
        group(tasks.child.si(n), tasks.child.si(n)).delay()
    else:
        tasks.work.delay(n)


async def work(request: Request) -> JSONResponse:
    n = int(request.path_params["n"])
    await asyncio.sleep(0.005)
    seen = logkit.get_context().get("request_id")
    if n % 2:
        await run_in_threadpool(publish, n)  # a sync call in a worker thread
    else:
        publish(n)
    await asyncio.sleep(0.005)
    log.info("published", extra={"n": n})
    return JSONResponse({"seen": seen, "after": logkit.get_context().get("request_id")})


async def stream(request: Request) -> StreamingResponse:
    async def body():  # type: ignore[no-untyped-def]
        for _ in range(3):
            await asyncio.sleep(0.01)
            yield (str(logkit.get_context().get("request_id")) + "\n").encode()

    return StreamingResponse(body())


app = RequestContextMiddleware(
    Starlette(routes=[Route("/work/{n}", work), Route("/stream", stream)])
)
