"""What logkit claims to support is what its version matrix runs, under the name it is
published as: pyproject.toml, noxfile.py, the README and docs/compatibility.md agree."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
README = (ROOT / "README.md").read_text()
COMPATIBILITY = (ROOT / "docs" / "compatibility.md").read_text()
QUICKSTART = (ROOT / "docs" / "quickstart.md").read_text()

nox = pytest.importorskip("nox", reason="noxfile.py needs nox (pip install -e '.[dev]')")
import noxfile  # noqa: E402  (after the skip: it imports nox)


def _table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of each row of the first table after ``heading`` (header rows excluded)."""
    section = text.split(heading, 1)[1]
    lines = re.search(r"((?:^\|.*\n)+)", section, re.M)
    assert lines is not None, heading
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in lines[1].splitlines()]
    return rows[2:]


def test_the_distribution_name_is_free_of_the_unrelated_logkit() -> None:
    # `logkit` on PyPI is another project; the import name stays `logkit`
    assert PROJECT["name"] == "celery-logkit"
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["logkit*"]
    for url in PROJECT["urls"].values():
        assert "/celery-logkit" in url, url


def test_install_commands_name_the_distribution_and_its_extras() -> None:
    extras = {"django", "flask", "otel"}
    assert extras <= set(PROJECT["optional-dependencies"])
    for text in (README, QUICKSTART):
        assert "pip install celery-logkit " in text
        for extra in extras:
            assert f"pip install 'celery-logkit[{extra}]'" in text, extra
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for command in re.findall(r"pip install [^`\n]*", path.read_text()):
            wrong = re.search(r"(?<![\w-])logkit\[|install logkit(?![\w-])", command)
            assert wrong is None, (path.name, command)


def test_the_lowest_celery_minor_is_the_declared_bound() -> None:
    (celery,) = [d for d in PROJECT["dependencies"] if re.match(r"celery\b", d)]
    assert celery == f"celery>={noxfile.CELERY_MINORS[0]}"  # and no upper bound
    assert not any(re.match(r"kombu\b", d) for d in PROJECT["dependencies"])


def test_classifiers_list_the_python_versions_the_matrix_runs() -> None:
    declared = sorted(c.rsplit(" :: ", 1)[1] for c in PROJECT["classifiers"]
                      if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    assert declared == noxfile.PYTHONS
    assert PROJECT["requires-python"] == f">={noxfile.PYTHONS[0]}"


def test_a_contract_session_for_every_pair_the_matrix_claims() -> None:
    out = subprocess.run([sys.executable, "-m", "nox", "-l", "--json"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    names = {s["session"] for s in json.loads(out)}
    expected = {f"celery-{p}({m})" for p, m in noxfile.CONTRACT}
    assert expected <= names, sorted(expected - names)
    # every minor on the oldest Python, the newest minor on every Python
    assert {m for p, m in noxfile.CONTRACT if p == noxfile.PYTHONS[0]} == set(
        noxfile.CELERY_MINORS)
    assert {p for p, m in noxfile.CONTRACT if m == noxfile.CELERY_MINORS[-1]} == set(
        noxfile.PYTHONS)
    assert noxfile.WHOLE_SUITE[0] == noxfile.PYTHONS[0]
    assert {f"tests-{p}" for p in noxfile.WHOLE_SUITE} | {"lowest", "package", "sentry2"} <= names


def test_the_compatibility_tables_claim_what_the_matrix_runs() -> None:
    header = [f"Python {p}" for p in noxfile.PYTHONS]
    for text, heading in ((COMPATIBILITY, "## Celery and Python"), (README, "## Compatibility")):
        rows = _table_rows(text, heading)
        assert [r[0] for r in rows] == noxfile.CELERY_MINORS, (heading, rows)
        first = text.split(heading, 1)[1]
        assert "| Celery | " + " | ".join(header) + " |" in first, heading
        for row in rows:
            assert len(row) == 1 + len(header), row
            for python, cell in zip(noxfile.PYTHONS, row[1:], strict=True):
                if (python, row[0]) in noxfile.CONTRACT:
                    # (the whole suite has the contract tests)
                    assert "contract tests" in cell or "whole suite" in cell, (
                        heading, row[0], python, cell)
                else:
                    assert cell == "not tested", (heading, row[0], python, cell)
                if "whole suite" in cell:
                    assert python in noxfile.WHOLE_SUITE, (heading, row[0], python, cell)
    differences = _table_rows(COMPATIBILITY, "## What differs between Celery minors")
    assert sorted({r[0] for r in differences}) == noxfile.CELERY_MINORS
