"""The documentation matches the code: every option, event and CLI flag is documented,
nothing that does not exist is, the record schema describes real formatter output, the
Python examples compile and ``mkdocs build --strict`` passes."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from logkit import LogConfig, bound
from logkit.config import EVENT_NAMES
from logkit.formatters import JsonFormatter

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIG_PAGE = DOCS / "configuration.md"
EVENTS_PAGE = DOCS / "events.md"
RECORDS_PAGE = DOCS / "records.md"
CLI_PAGE = DOCS / "cli.md"


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def all_docs() -> dict[Path, str]:
    return {p: read(p) for p in sorted(DOCS.rglob("*.md"))}


def section(text: str, heading: str) -> str:
    """The body of ``heading`` (e.g. ``### format``) up to the next heading of any level."""
    match = re.search(rf"^{re.escape(heading)}\s*$(.*?)(?=^#{{1,6}} |\Z)", text, re.M | re.S)
    assert match, f"no heading {heading!r}"
    return match.group(1)


# ---------------------------------------------------------------------------
# Configuration reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", LogConfig.option_names())
def test_every_option_is_in_the_reference(name: str) -> None:
    text = read(CONFIG_PAGE)
    body = section(text, f"### {name}")
    for spelling in (f"`{name}`", f"`logkit_{name}`", f"`LOGKIT_{name.upper()}`"):
        assert spelling in text, f"{spelling} missing from configuration.md"
    assert f"kwarg `{name}`" in body
    assert f"`app.conf.logkit_{name}`" in body
    assert f"env `LOGKIT_{name.upper()}`" in body
    prefix = f"| [{name}](#{name})"
    row = next((line for line in text.splitlines() if line.startswith(prefix)), None)
    assert row is not None, f"{name} missing from the summary table"
    assert f"`logkit_{name}`" in row and f"`LOGKIT_{name.upper()}`" in row


@pytest.mark.parametrize(
    "option",
    [f for f in dataclasses.fields(LogConfig) if isinstance(f.default, (bool, int, str))],
    ids=lambda f: f.name,
)
def test_scalar_defaults_are_documented(option: dataclasses.Field[Any]) -> None:
    body = section(read(CONFIG_PAGE), f"### {option.name}")
    assert f"**Default:** `{option.default}`" in body


def test_no_unknown_option_is_documented() -> None:
    """Every ``LOGKIT_X`` / ``logkit_x`` / ``### x`` named in the docs is a real option."""
    options = set(LogConfig.option_names())
    for path, text in all_docs().items():
        for var in re.findall(r"\bLOGKIT_([A-Z][A-Z_]*)\b", text):
            if var == "REQUEST" or var.startswith("REQUEST_"):  # the web middlewares' settings
                continue
            assert var.lower() in options, f"{path.name}: LOGKIT_{var} is not an option"
        for key in re.findall(r"\blogkit_([a-z][a-z_]*)\b", text):
            # logkit_context (the header), logkit_error (a record field), logkit_records
            # (the pytest fixture), logkit_level(s) (remote control commands) and
            # logkit_published/logkit_received (queue time stamps) are not options
            not_options = ("context", "error", "records", "level", "levels", "published",
                           "received")
            assert key in options or key in not_options, (
                f"{path.name}: logkit_{key}"
            )
    for heading in re.findall(r"^### (\w+)\s*$", read(CONFIG_PAGE), re.M):
        assert heading in options, f"configuration.md documents {heading!r}, not an option"


def test_precedence_is_documented_as_the_code_resolves_it() -> None:
    """CLI > env > kwargs > app.conf > default, in the code and on the page."""

    class Conf(dict[str, Any]):
        pass

    class App:
        conf = Conf(logkit_format="plain")

    assert LogConfig.resolve(App(), {}, env={}).format == "plain"
    assert LogConfig.resolve(App(), {"format": "console"}, env={}).format == "console"
    env = {"LOGKIT_FORMAT": "json"}
    assert LogConfig.resolve(App(), {"format": "console"}, env=env).format == "json"
    assert LogConfig.resolve(App(), {}, env=env, cli={"format": "console"}).format == "console"

    order = section(read(CONFIG_PAGE), "## Where options come from")
    sources = (
        "command-line", "LOGKIT_<NAME>", "`logkit.install(app", "app.conf.logkit_<name>",
        "the default",
    )
    positions = [order.index(s) for s in sources]
    assert positions == sorted(positions)


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("event", EVENT_NAMES)
def test_every_event_is_on_the_events_page(event: str) -> None:
    from logkit.events import DEFAULT_LEVELS

    rows = [line for line in read(EVENTS_PAGE).splitlines() if line.startswith(f"| `{event}` |")]
    assert len(rows) == 1, f"{event}: expected one row in the events table"
    level = rows[0].split("|")[2].strip()
    assert level.startswith(logging.getLevelName(DEFAULT_LEVELS[event])), (event, level)


def test_no_unknown_event_is_in_the_events_table() -> None:
    names = re.findall(r"^\| `(\w+)` \| (?:DEBUG|INFO|WARNING|ERROR)", read(EVENTS_PAGE), re.M)
    assert set(names) == set(EVENT_NAMES)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _preload_flags() -> list[str]:
    celery_options = pytest.importorskip("logkit.celery_options")
    flags: list[str] = []
    for option in celery_options._preload_options():
        flags.extend(option.opts)
        flags.extend(option.secondary_opts)
    return flags


def test_every_celery_flag_is_documented() -> None:
    flags = _preload_flags()
    assert flags, "logkit.celery_options registers no celery options"
    config, cli_page = read(CONFIG_PAGE), read(CLI_PAGE)
    for flag in flags:
        assert f"`{flag}" in config, f"{flag} missing from configuration.md"
        assert f"`{flag}" in cli_page, f"{flag} missing from cli.md"


def test_every_logkit_command_and_flag_is_documented() -> None:
    cli = pytest.importorskip("logkit.cli")
    import click

    text = read(CLI_PAGE)
    assert cli.main.commands, "the logkit command has no sub-commands"
    for name, command in cli.main.commands.items():
        body = section(text, f"### `logkit {name}`")
        for param in command.params:
            if not isinstance(param, click.Option) or param.name == "help":
                continue
            for flag in (*param.opts, *param.secondary_opts):
                assert f"`{flag}" in body, f"logkit {name} {flag} missing from cli.md"


def test_no_unknown_flag_is_documented() -> None:
    known = set(_preload_flags())
    for path, text in all_docs().items():
        for flag in re.findall(r"(--(?:no-)?log-[a-z-]+)", text):
            assert flag in known, f"{path.name}: {flag} is not a logkit option"


# ---------------------------------------------------------------------------
# Record schema
# ---------------------------------------------------------------------------


def _schema() -> dict[str, Any]:
    body = section(read(RECORDS_PAGE), "## JSON Schema")
    match = re.search(r"```json\n(.*?)```", body, re.S)
    assert match
    schema: dict[str, Any] = json.loads(match.group(1))
    return schema


_TYPES = {"string": str, "integer": int, "object": dict, "number": (int, float)}


def _check(value: Any, schema: dict[str, Any], where: str = "record") -> None:
    """The subset of JSON Schema the page uses: type, required, properties, pattern."""
    expected = _TYPES[schema["type"]]
    assert isinstance(value, expected) and not isinstance(value, bool), (where, value)
    if "pattern" in schema:
        assert re.search(schema["pattern"], value), (where, value)
    for key in schema.get("required", ()):
        assert key in value, f"{where}: {key} missing"
    for key, sub in schema.get("properties", {}).items():
        if key in value:
            _check(value[key], sub, f"{where}.{key}")


def _records() -> list[dict[str, Any]]:
    formatter = JsonFormatter(LogConfig(fields={"service": "billing"}, max_field_length=50))
    log = logging.getLogger("docs.example")

    def fmt(msg: str, **kwargs: Any) -> dict[str, Any]:
        record = log.makeRecord(log.name, logging.INFO, __file__, 1, msg, (), None, **kwargs)
        out: dict[str, Any] = json.loads(formatter.format(record))
        return out

    task = {
        "task_id": "549b196b", "task_name": "proj.charge", "parent_id": "p1", "root_id": "r1",
        "retries": 0, "worker": "celery@vm", "queue": "celery", "correlation_id": "549b196b",
        "args": "['alice']", "kwargs": "{}",
    }
    with bound(**task, request_id="r-42"):
        plain = fmt("charging %s" % ("x" * 80), extra={"amount": 12.5, "logger": "shadow"})
    try:
        raise ValueError("declined")
    except ValueError:
        record = log.makeRecord(log.name, logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
        failed: dict[str, Any] = json.loads(formatter.format(record))
    return [plain, failed]


def _clashing_extra() -> dict[str, Any]:
    """Extra keys that are LogRecord attributes, through logkit's ``makeRecord``."""
    from logkit.setup import _make_record

    log = logging.getLogger("docs.example")
    extra = {"message": 1, "name": 2}
    record = _make_record(log, log.name, logging.INFO, __file__, 1, "m", (), None, extra=extra)
    out = json.loads(JsonFormatter().format(record))
    return {k: v for k, v in out.items() if k in ("message_", "name_")}


def test_schema_describes_real_records() -> None:
    schema = _schema()
    plain, failed = _records()
    for record in (plain, failed):
        _check(record, schema)
    user_keys = {"service", "request_id", "amount", "_logger"}
    assert set(schema["properties"]) >= set(plain) - user_keys
    assert plain["_logger"] == "shadow"  # the documented `_` prefix for colliding extras
    assert plain["message"].endswith("…[truncated 39 chars]")  # 89 chars cut to 50
    assert list(plain)[:5] == ["timestamp", "level", "logger", "message", "service"]
    assert failed["exception"]["type"] == "ValueError"
    assert _clashing_extra() == {"message_": 1, "name_": 2}  # the documented `_` suffix
    if importlib.util.find_spec("jsonschema") is not None:
        import jsonschema

        for record in (plain, failed):
            jsonschema.validate(record, schema)


def test_documented_record_keys_exist() -> None:
    """The keys in the records table are the formatter's keys."""
    plain, failed = _records()
    table = section(read(RECORDS_PAGE), "## Fields, in output order")
    keys = re.findall(r"^\| `(\w+)` \|", table, re.M)
    produced = set(plain) | set(failed)
    assert keys == [
        "timestamp", "level", "logger", "message", "process", "thread", "exception", "stack"
    ]
    assert set(keys) - {"stack"} <= produced


# ---------------------------------------------------------------------------
# Pages, examples, README, build
# ---------------------------------------------------------------------------


def test_every_page_is_in_the_nav() -> None:
    nav = read(ROOT / "mkdocs.yml")
    for path in all_docs():
        assert f" {path.relative_to(DOCS).as_posix()}" in nav, f"{path} not in mkdocs.yml nav"


def _python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path, text in all_docs().items():
        for i, code in enumerate(re.findall(r"```python[^\n]*\n(.*?)```", text, re.S)):
            blocks.append((f"{path.relative_to(DOCS)}#{i}", code))
    return blocks


@pytest.mark.parametrize(("where", "code"), _python_blocks(), ids=[w for w, _ in _python_blocks()])
def test_python_examples_compile(where: str, code: str) -> None:
    compile(code, where, "exec")


def test_readme_starts_with_the_two_commands() -> None:
    lines = [line for line in read(ROOT / "README.md").splitlines() if line.strip()]
    commands = [line for line in lines[:8] if not line.startswith(("#", "```"))]
    assert commands[0] == "pip install -e '.[dev]' && python -m logkit demo --format console"
    assert commands[1] == "python -m pytest -q"


def test_readme_links_into_docs_exist() -> None:
    links = re.findall(r"\]\((docs/[^)#]+)", read(ROOT / "README.md"))
    assert links
    for link in links:
        assert (ROOT / link).is_file(), link


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs / mkdocs-material not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()


def test_benchmark_flags_are_real() -> None:
    """Every flag on the benchmarks page is accepted by ``python -m benchmarks``."""
    if not (ROOT / "benchmarks" / "__main__.py").is_file():
        pytest.skip("benchmarks/ has no command line yet")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    documented = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", read(DOCS / "benchmarks.md")))
    documented -= {"--benchmark-only"}  # pytest-benchmark's flag
    assert documented
    for flag in documented:
        assert flag in proc.stdout, f"benchmarks.md documents {flag}, not a benchmarks flag"
    # "(default N)" in the --help text is the default the page gives for that flag
    help_text = " ".join(proc.stdout.split())
    page = read(DOCS / "benchmarks.md")
    for flag, default in re.findall(r"(--[a-z-]+) [A-Z]+ [^-]*?\(default (\d+)\)", help_text):
        row = next(line for line in page.splitlines() if line.startswith(f"| `{flag}"))
        assert f"default {default}" in row, (flag, default, row)


#: Celery settings newer than logkit's lowest supported Celery, with the release that added
#: them: where the docs name one, the same line says from which Celery on.
NEWER_CELERY_SETTINGS = {"worker_log_datefmt": "5.7"}


def test_celery_names_in_the_docs_are_real() -> None:
    """Every ``worker_*``/``beat_*`` name is a Celery setting, a Celery signal or an event."""
    from celery import signals
    from celery.app.defaults import DEFAULTS

    known = set(DEFAULTS) | set(EVENT_NAMES) | {n for n in dir(signals) if not n.startswith("_")}
    texts = {**all_docs(), ROOT / "README.md": read(ROOT / "README.md")}
    for path, text in texts.items():
        for line in text.splitlines():
            for name in set(re.findall(r"\b((?:worker|beat)_[a-z_]+)\b", line)):
                since = NEWER_CELERY_SETTINGS.get(name)
                if since is not None:
                    assert f"Celery {since}+" in line, f"{path.name}: say from which Celery: {line}"
                    continue
                assert name in known, f"{path.name}: {name} is no Celery setting, signal or event"


def test_documented_event_fields_are_emitted_by_the_code() -> None:
    """Each field in the events table is a key that ``logkit/events/`` writes."""
    source = "\n".join(read(path) for path in sorted((ROOT / "logkit" / "events").glob("*.py")))
    # bound from the context, written by the formatter, or a JSON value named in the text
    context_keys = {"task_id", "task_name", "worker", "exception", "null"}
    rows = [line for line in read(EVENTS_PAGE).splitlines() if re.match(r"\| `\w+` \| [A-Z]", line)]
    assert len(rows) == len(EVENT_NAMES)
    for row in rows:
        fields_column = row.split("|")[4]
        for name in re.findall(r"`(\w+)`", fields_column):
            if name in context_keys or not name.islower():
                continue
            event = row.split("|")[1].strip()
            assert f'"{name}"' in source, f"{name} ({event}) not in logkit/events/"
