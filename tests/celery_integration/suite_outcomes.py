"""pytest plugin (``-p suite_outcomes``): each test's final outcome, one JSON line per
report, to the file ``$SUITE_OUTCOMES`` names (read by ``compare.py``).

One line per phase report (``setup``, ``call``, ``teardown``) of each test: its node id,
the phase, the outcome (``passed``, ``failed``, ``skipped``, or ``rerun`` when
pytest-rerunfailures runs it again) and whether it was an expected failure. Subtest
reports are left out: a test's own reports decide its outcome.
"""

from __future__ import annotations

import json
import os
from typing import Any


def pytest_runtest_logreport(report: Any) -> None:
    path = os.environ.get("SUITE_OUTCOMES")
    if not path or type(report).__name__ != "TestReport":
        return
    row = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
           "xfail": hasattr(report, "wasxfail"), "duration": round(report.duration, 3)}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")
