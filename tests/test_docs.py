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
from logkit.config import EVENT_NAMES, OPTIONS
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


def _shown(value: Any) -> str:
    """A scalar default as the reference shows it (``0.0`` as ``0``)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_the_reference_says_what_the_option_table_declares(name: str) -> None:
    """The summary row and the section of each option: its keys, env var, flag (or none),
    choices and default, as its row of the option table (logkit.config.OPTIONS) has them."""
    row = OPTIONS[name]
    text = read(CONFIG_PAGE)
    body = section(text, f"### {name}")
    summary = next(line for line in text.splitlines() if line.startswith(f"| [{name}](#{name})"))
    cells = [cell.strip() for cell in summary.strip().strip("|").split("|")]
    assert cells[1:4] == [f"`{name}`", f"`{row.settings[0]}`", f"`{row.env}`"], summary
    flags = row.flag.split("/") if row.flag else []
    for flag in flags:
        assert f"`{flag}" in cells[4], summary
        assert f"`{flag}" in body, f"{flag} missing from ### {name}"
    if row.metavar is not None:
        assert row.metavar in cells[4], summary
    if not flags:
        assert cells[4] == "—", summary
        assert "--log-" not in body and "CLI" not in body, f"### {name} names a flag"
    if row.choices is not None:
        listed = re.search(r"^- type: one of (.*)$", body, re.M)
        assert listed is not None, f"### {name} lists no choices"
        assert re.findall(r"`(\w+)`", listed.group(1)) == list(row.choices)
    if isinstance(row.default, (bool, int, float, str)):
        shown = _shown(row.default)
        assert f"**Default:** `{shown}`" in body
        quoted = f'"{shown}"' if isinstance(row.default, str) else shown
        assert cells[5].startswith(f"`{quoted}`"), summary


def test_the_option_table_is_the_config_s_fields() -> None:
    """One declaration: the table is LogConfig's fields, each with its type and default."""
    fields = {f.name: f for f in dataclasses.fields(LogConfig)}
    assert list(OPTIONS) == list(fields) == list(LogConfig.option_names())
    defaults = LogConfig()
    for name, row in OPTIONS.items():
        assert row.type == fields[name].type
        assert getattr(defaults, name) == row.default
        assert row.env == f"LOGKIT_{name.upper()}"
        assert row.doc and not row.doc.startswith(" ")


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
            # logkit_published/logkit_received (queue time stamps), logkit_sample (a remote
            # control command) are not options
            not_options = ("context", "error", "records", "level", "levels", "published",
                           "received", "sample")
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
    assert "thread" not in produced  # made in the main thread: no thread id (#37)
    formatter = JsonFormatter(LogConfig())
    record = logging.getLogger("docs.example").makeRecord("docs.example", logging.INFO,
                                                           __file__, 1, "m", (), None)
    record.thread = 1402  # a record of another thread: its id
    produced |= set(json.loads(formatter.format(record)))
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


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built by ``mkdocs build --strict``."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs / mkdocs-material not installed")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_mkdocs_build_strict(site: Path) -> None:
    assert (site / "configuration" / "index.html").is_file()
    _check_api_pages(site / "api")


def _check_api_pages(api: Path) -> None:
    """Every public name has an entry with its signature; the middlewares and
    ``logkit.testing`` have theirs."""
    import logkit

    page = read(api / "index.html")
    ids = set(re.findall(r'<h2 id="(logkit[\w.]*)"', page))
    for name in logkit.__all__:
        assert {f"logkit.{name}", f"logkit.{name}.{name}"} & ids, f"logkit.{name} not in the API"
    assert 'class="doc-signature' in page  # signatures, with their types
    pages = {
        "middlewares": ["logkit.django.RequestContextMiddleware", "logkit.flask.init_app",
                        "logkit.asgi.RequestContextMiddleware",
                        "logkit.wsgi.RequestContextMiddleware"],
        "testing": ["logkit.testing.capture", "logkit.testing.Records.assert_logged",
                    "logkit.pytest_plugin.logkit_records"],
    }
    for name, entries in pages.items():
        html = read(api / name / "index.html")
        for entry in entries:
            assert f'id="{entry}"' in html, (name, entry)
    for html in (page, *(read(api / name / "index.html") for name in pages)):
        assert not re.search(r":(?:func|class|meth|mod):`", html)  # roles made into code


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


# ---------------------------------------------------------------------------
# Code blocks: width, JSON examples made by the current code (#30)
# ---------------------------------------------------------------------------

#: The widest line a code block may have: wider ones scroll sideways on the site.
MAX_CODE_WIDTH = 100

_FENCE = re.compile(r"^([ \t]*)(`{3,}|~{3,})([^\n]*)\n(.*?)^\1\2[ \t]*$", re.M | re.S)


def _code_blocks() -> list[tuple[str, str, str]]:
    """``(where, language, body)`` of every fenced block in docs/ and the README."""
    texts = {**all_docs(), ROOT / "README.md": read(ROOT / "README.md")}
    blocks = []
    for path, text in texts.items():
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            indent = match.group(1)
            body = "\n".join(row.removeprefix(indent) for row in match.group(4).splitlines())
            language = match.group(3).strip().split(" ")[0]
            blocks.append((f"{path.relative_to(ROOT)}:{line}", language, body))
    return blocks


def test_every_code_line_fits_the_page() -> None:
    blocks = _code_blocks()
    fences = sum(
        len(re.findall(r"^[ \t]*(?:`{3,}|~{3,})", text, re.M))
        for text in (*all_docs().values(), read(ROOT / "README.md"))
    )
    assert len(blocks) * 2 == fences  # every block was found, each opened and closed
    too_wide = [
        f"{where}: {len(row)} chars: {row[:60]}..."
        for where, _, body in blocks
        for row in body.splitlines()
        if len(row) > MAX_CODE_WIDTH
    ]
    assert not too_wide, "\n".join(too_wide)


def test_every_json_example_is_valid_json() -> None:
    blocks = [(where, body) for where, language, body in _code_blocks() if language == "json"]
    assert len(blocks) >= 15
    for where, body in blocks:
        try:
            json.loads(body)
        except ValueError as exc:
            pytest.fail(f"{where}: not JSON ({exc})")


def _examples_module() -> Any:
    spec = importlib.util.spec_from_file_location("docs_examples", DOCS / "examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_json_examples_are_what_the_formatter_writes() -> None:
    """Each marked example is the current ``JsonFormatter`` output (``python docs/examples.py``
    rewrites them)."""
    examples = _examples_module()
    used: set[str] = set()
    for page in examples.PAGES:
        text = read(ROOT / page)
        used.update(name for name, _ in examples.MARKER.findall(text))
        assert examples.rewrite(text) == text, (
            f"{page}: a JSON example is not what the code writes now: run python docs/examples.py"
        )
    assert used == set(examples.EXAMPLES), set(examples.EXAMPLES) ^ used
    for path, text in all_docs().items():
        if "<!-- example:" in text:
            assert path.relative_to(ROOT).as_posix() in examples.PAGES, path


@pytest.fixture(scope="module")
def demo_records() -> list[dict[str, Any]]:
    """The JSON lines of a real demo worker (``python -m logkit demo --format json``)."""
    proc = subprocess.run(
        [sys.executable, "-m", "logkit", "demo", "--format", "json"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert any(r.get("event") == "worker_shutdown" for r in records), proc.stdout[-3000:]
    return records


def _real(records: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    found = [r for r in records if all(r.get(k, None) == v for k, v in fields.items())]
    assert found, f"the demo wrote no record with {fields}"
    return found[0]


def test_json_examples_have_the_fields_a_real_worker_writes(
    demo_records: list[dict[str, Any]],
) -> None:
    """The examples' keys, in order, are those of the demo worker's records of the same kind
    (less the example's own static and ``extra`` fields)."""
    examples = _examples_module().EXAMPLES
    for event in ("task_succeeded", "worker_ready"):
        real = _real(demo_records, event=event, parent_id=None)
        assert list(examples[event]()) == list(real), event
    app = _real(demo_records, logger="logkit.demo_app", message="greeting ada")
    app_keys = [k for k in app if k != "user"]  # the demo's extra field
    for name, own in (
        ("task-record", {"service", "amount"}),
        ("task-record-readme", {"amount"}),
        ("task-error", {"service", "exception"}),
    ):
        assert [k for k in examples[name]() if k not in own] == app_keys, name
    failed = _real(demo_records, event="task_failed")
    for name in ("task-error", "exception-record"):
        assert list(examples[name]()["exception"]) == list(failed["exception"]), name


# ---------------------------------------------------------------------------
# Pictures: made from real output by docs/pictures.py, still showing what the code writes
# ---------------------------------------------------------------------------

IMAGES = DOCS / "images"
_RECORD_START = re.compile(r"^(?:worker\d\.log\s+)?\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3} ")
_FIELD = re.compile(r"(?<![\w.'\"])([a-z][a-z0-9_]*)=")


def _svg_records(path: Path) -> list[str]:
    """The text of a rich SVG terminal, one string per log record (wrapped lines joined)."""
    import html

    svg = read(path)
    assert "Generated with Rich" in svg, f"{path.name} was not made by rich (docs/pictures.py)"
    pieces = [
        (int(number), float(x), float(length), html.unescape(text).replace("\xa0", " "))
        for x, length, number, text in re.findall(
            r'<text [^>]*x="([\d.]+)" [^>]*textLength="([\d.]+)" '
            r'clip-path="url\(#[\w-]+-line-(\d+)\)"[^>]*>([^<]*)</text>',
            svg,
        )
    ]
    assert pieces, f"no terminal text in {path.name}"
    cell = pieces[0][2] / len(pieces[0][3])  # one character's width
    lines: dict[int, str] = {}
    for number, x, _, text in pieces:  # whitespace between pieces is not drawn: pad to x
        line = lines.get(number, "")
        lines[number] = line.ljust(round(x / cell)) + text.rstrip("\n")
    return _records_of([line.rstrip() for _, line in sorted(lines.items())])


def _records_of(lines: list[str]) -> list[str]:
    """Console lines, one string per record: wrapped lines joined, traceback lines apart."""
    records: list[str] = []
    for line in lines:
        if _RECORD_START.match(line) or line.startswith(" ") or not records:
            records.append(line)  # a record, or a line of its traceback
        else:  # the rest of a wrapped line
            records[-1] += " " + line
    return records


def _fields_by_event(lines: list[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in lines:
        match = re.search(r"\bevent=(\w+)", line)
        if match:
            out.setdefault(match.group(1), set()).update(_FIELD.findall(line))
    return out


def test_pictures_are_on_the_pages() -> None:
    for page, picture in (
        ("index.md", "demo-console.svg"),
        ("quickstart.md", "demo-console.svg"),
        ("cli.md", "view-workers.svg"),
        ("cli.md", "demo-console.svg"),
    ):
        assert f"images/{picture}" in read(DOCS / page), (page, picture)
        assert (IMAGES / picture).is_file(), picture


def _stale(picture: str, event: str, shown: set[str] | None, now: set[str]) -> str:
    return (
        f"{picture} shows {event} with {sorted(shown or ())}, the code now writes "
        f"{sorted(now)}: run python docs/pictures.py"
    )


def test_console_picture_shows_the_events_and_fields_the_demo_writes() -> None:
    """Each event of the demo is in the picture with the fields the console shows for it
    now (from a real demo run, colour off), and no other."""
    proc = subprocess.run(
        [sys.executable, "-m", "logkit", "demo", "--format", "console"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
        env={k: v for k, v in os.environ.items() if k != "FORCE_COLOR"} | {"NO_COLOR": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\x1b[" not in proc.stdout
    now = _fields_by_event(_records_of(proc.stdout.splitlines()))
    assert {"worker_ready", "task_received", "task_succeeded", "task_failed",
            "task_retried", "worker_shutdown"} <= set(now)
    console = _svg_records(IMAGES / "demo-console.svg")
    pictured = _fields_by_event(console)
    for event, fields in now.items():
        assert pictured.get(event) == fields, _stale("demo-console.svg", event,
                                                     pictured.get(event), fields)
    assert set(pictured) == set(now)
    assert any("Traceback (most recent call last)" in line for line in console)


def test_view_picture_merges_two_workers_with_the_fields_the_code_writes(
    demo_records: list[dict[str, Any]],
) -> None:
    """``logkit view`` of the two workers' files shows, for each event, the fields
    ``logkit view`` shows now for the demo's JSON records of that event."""
    from logkit.cli import render

    # the tasks docs/pictures.py runs on the two workers (no retry: no task_received
    # with an eta, a field written only when there is one); the worker events of all
    pictured_tasks = {f"logkit.demo_app.{name}" for name in ("greet", "fail", "add")}
    now = _fields_by_event([render(r) for r in demo_records
                            if r.get("task_name", next(iter(pictured_tasks))) in pictured_tasks])
    view = _svg_records(IMAGES / "view-workers.svg")
    assert view[0].startswith("$ logkit view --color worker1.log worker2.log")
    labels = {line.split()[0] for line in view[1:] if not line.startswith(" ")}
    assert labels == {"worker1.log", "worker2.log"}  # not traceback lines: every record
    pictured = _fields_by_event(view)
    assert {"worker_ready", "task_received", "task_succeeded", "task_failed",
            "worker_shutdown"} <= set(pictured)
    for event, fields in pictured.items():
        assert event in now, f"view-workers.svg shows {event}, which the demo no longer writes"
        assert fields == now[event], _stale("view-workers.svg", event, fields, now[event])


#: In a window this wide, no code block of any page may scroll sideways.
BROWSER_WIDTH = 1280
_BROWSER = ("chromium", "chromium-browser", "google-chrome")


def test_no_code_block_scrolls_sideways_in_a_browser(site: Path, tmp_path: Path) -> None:
    """Every page of the built site, laid out by headless Chromium at 1280 pixels: no code
    block, table or picture is wider than its box, and the page itself is not."""
    import functools
    import shutil
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    browser = next((b for b in map(shutil.which, _BROWSER) if b), None)
    if browser is None:
        pytest.skip("no Chromium to lay the pages out")
    pages = sorted(
        p.parent.relative_to(site).as_posix() + "/" for p in site.rglob("index.html")
    )
    pages = [p.removeprefix("./") for p in pages]
    assert len(pages) == len(all_docs())
    (site / "_width.html").write_text(_WIDTH_CHECK % (json.dumps(pages), BROWSER_WIDTH))

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000",
             "--virtual-time-budget=120000", "--dump-dom",
             f"http://127.0.0.1:{server.server_address[1]}/_width.html"],
            capture_output=True, text=True, timeout=280,
        )
    finally:
        server.shutdown()
        server.server_close()
    match = re.search(r'<pre id="out">DONE\n(.*?)</pre>', proc.stdout, re.S)
    assert match, f"the check page did not finish: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
    import html

    lines = html.unescape(match.group(1)).splitlines()
    results = dict(line.split(": ", 1) for line in lines)
    assert set(results) == set(pages)
    wide = {page: result for page, result in results.items() if result != "ok"}
    assert not wide, "\n".join(f"{page}: {result}" for page, result in wide.items())


#: Loads each page in a same-origin iframe as wide as a window and lists what overflows.
_WIDTH_CHECK = """<!doctype html><html><body><pre id="out">running</pre><script>
const pages = %s, width = %d, out = [];
function check(page, frame) {
  const doc = frame.contentDocument, wide = [];
  doc.querySelectorAll("pre > code, .md-typeset__scrollwrap, .md-typeset table, img")
    .forEach(el => {
      if (el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1) {
        const what = (el.textContent || el.getAttribute("src") || "").slice(0, 60);
        wide.push(el.tagName + " " + el.scrollWidth + ">" + el.clientWidth + " "
                  + what.replace(/\\n/g, " | "));
      }
    });
  const root = doc.documentElement;
  if (root.scrollWidth > root.clientWidth + 1) wide.push("page " + root.scrollWidth);
  out.push(page + ": " + (wide.length ? wide.join(" ;; ") : "ok"));
}
function next(i) {
  if (i >= pages.length) {
    document.getElementById("out").textContent = "DONE\\n" + out.join("\\n");
    return;
  }
  const frame = document.createElement("iframe");
  frame.width = width; frame.height = 900; frame.src = "/" + pages[i];
  frame.onload = () => setTimeout(() => { check(pages[i], frame); frame.remove(); next(i + 1); },
                                  200);
  document.body.appendChild(frame);
}
next(0);
</script></body></html>
"""


#: The modules whose docstrings #30 brought up to the API reference's standard.
DOCUMENTED_MODULES = ("config", "context", "filters", "testing", "django", "asgi", "wsgi", "flask")


def test_public_calls_document_their_arguments_and_results() -> None:
    """In ``DOCUMENTED_MODULES``: every public function and method has a docstring naming
    each argument (``Args:``), and what it returns (``Returns:``/``Yields:``, or a summary
    starting "Return") unless it returns ``None``; a class documents its ``__init__``'s
    arguments (a dataclass: its fields, as attributes)."""
    griffe = pytest.importorskip("griffe")
    kinds = griffe.DocstringSectionKind
    pytest.importorskip("griffe_sphinx")  # the `#:` comments of attributes, as the site reads them
    package = griffe.load(
        "logkit", search_paths=[str(ROOT)], docstring_parser="google",
        # the options' docs, as the site reads them (docs/griffe_options.py)
        extensions=griffe.load_extensions("griffe_sphinx",
                                          f"{DOCS / 'griffe_options.py'}:OptionDocs"),
    )

    def documented(obj: Any) -> tuple[set[str], bool, str]:
        sections = obj.docstring.parse("google") if obj.docstring else []
        names = {p.name.lstrip("*") for s in sections if s.kind is kinds.parameters
                 for p in s.value}
        results = any(s.kind in (kinds.returns, kinds.yields) for s in sections)
        return names, results, obj.docstring.value if obj.docstring else ""

    problems = []
    for module in DOCUMENTED_MODULES:
        for name in package[module].exports or ():
            obj = package[module][name]
            if obj.is_alias or not (obj.is_function or obj.is_class):
                continue
            calls = [obj] if obj.is_function else [
                m for n, m in obj.members.items() if m.is_function and not n.startswith("_")
            ]
            init = obj.members.get("__init__") if obj.is_class else None
            if init is not None:
                names, _, _ = documented(obj)
                if "dataclass" in obj.labels:  # its fields are documented as attributes
                    names |= {n for n, m in obj.members.items() if m.is_attribute and m.docstring}
                missing = [p.name for p in init.parameters if p.name != "self"
                           and p.name not in names]
                if missing:
                    problems.append(f"{obj.path}: arguments {missing} not in its docstring")
            for call in calls:
                names, results, text = documented(call)
                if not text:
                    problems.append(f"{call.path}: no docstring")
                    continue
                missing = [p.name for p in call.parameters
                           if p.name not in ("self", "cls") and p.name not in names]
                if missing:
                    problems.append(f"{call.path}: arguments {missing} not in its docstring")
                returns = str(call.returns) if call.returns is not None else "None"
                if returns != "None" and not results and not text.startswith("Return"):
                    problems.append(f"{call.path}: says nothing of what it returns ({returns})")
    assert not problems, "\n".join(problems)
