"""The formatter benchmark under pytest-benchmark: ``pytest benchmarks/ --benchmark-only``.

Same record and peers as ``python -m benchmarks --only formatters`` (which interleaves
the cases and prints ratios to the stdlib floor); here pytest-benchmark times each case
on its own and prints its own table, grouped by what is measured.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks import formatters

PEERS = {peer.name: peer for peer in formatters.peers()}


@pytest.fixture(autouse=True)
def _bound_context() -> Iterator[None]:
    with formatters.bound_context():
        yield


@pytest.mark.benchmark(group="format() of a prebuilt record")
@pytest.mark.parametrize("name", [n for n, p in PEERS.items() if p.formatter is not None])
def test_format(benchmark: Any, name: str) -> None:
    peer = PEERS[name]
    assert peer.formatter is not None
    record = formatters.make_record(peer.extra)
    line = benchmark(peer.formatter.format, record)
    assert "charged order A-1001 for alice" in line


@pytest.mark.benchmark(group="logger.info() to /dev/null")
@pytest.mark.parametrize("name", list(PEERS))
def test_logger_info(benchmark: Any, name: str) -> None:
    peer = PEERS[name]
    kwargs = {"extra": peer.extra} if peer.extra is not None else dict(formatters.EXTRA)
    benchmark(peer.logger, formatters.MESSAGE, *formatters.ARGS, **kwargs)


@pytest.mark.benchmark(group="disabled call (logger.debug at level INFO)")
def test_disabled_stdlib(benchmark: Any) -> None:
    log = logging.getLogger("bench.pytest.disabled")
    log.setLevel(logging.INFO)
    benchmark(log.debug, formatters.MESSAGE, *formatters.ARGS, extra=formatters.EXTRA)
