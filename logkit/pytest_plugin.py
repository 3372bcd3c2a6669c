"""pytest plugin (entry point ``pytest11``: ``logkit``): the ``logkit_records`` fixture.

Loaded automatically once logkit is installed; it changes nothing until a test asks
for ``logkit_records``. Importing it imports neither Celery nor logkit's modules.

>>> def test_add_logs_its_result(logkit_records):  # doctest: +SKIP
...     add.delay(2, 3).get()
...     logkit_records.wait_for(event="task_succeeded", result="5")
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .testing import Records

__all__ = ["logkit_records"]

_RECORDS = pytest.StashKey["Records"]()
#: Most records listed in a failed test's report section.
_REPORTED = 50


@pytest.fixture
def logkit_records(request: pytest.FixtureRequest) -> Iterator[Records]:
    """What logkit writes during the test, as dicts: ``logkit.testing.capture()`` around it.

    A failed test that used it lists the captured records in a report section.

    Yields:
        The records captured so far (``logkit.testing.Records``).
    """
    from .testing import capture

    with capture() as records:
        request.node.stash[_RECORDS] = records
        yield records


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that used ``logkit_records`` gets them in a report section."""
    report = yield
    records = item.stash.get(_RECORDS, None)
    if records is not None and report.failed and call.when == "call":
        from .testing import summary

        shown = records[-_REPORTED:]
        lines = [summary(r, records.names) for r in shown]
        if len(records) > len(shown):
            lines.insert(0, f"... {len(records) - len(shown)} earlier records not shown")
        report.sections.append(("Captured logkit records", "\n".join(lines) or "(none)"))
    return report
