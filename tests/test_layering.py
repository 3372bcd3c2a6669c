"""logkit's modules import downward only, and importing logkit has no effect.

The layers, lowest first, are the module map of docs/how-it-works.md: a module may
import modules of lower layers only (not of its own layer, not of a higher one),
and every import counts, also one inside a function (logkit has no lazy import of
its own modules that needs an exception).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "logkit"

#: Lowest first. A module imports only modules listed in an earlier layer.
LAYERS: list[set[str]] = [
    # never-raising conversions, the clock; config and context; the record of changes
    {"logkit._safe", "logkit._clock", "logkit.config", "logkit.context", "logkit._changes",
     "logkit.sinks"},  # where a line is written: a file or stderr
    # every Celery and Python version difference, and Celery's internals (imported lazily)
    {"logkit._compat"},
    {"logkit.schemas", "logkit.trace"},  # a backend's field names; the current span's ids
    {"logkit.buffer", "logkit.dedupe"},  # task_buffer, dedupe_window (#29): filters on handlers
    {"logkit.sample"},  # task_sample (#38): its filter goes after the buffer's trigger
    {"logkit._fields"},  # a record's fields: the field pipeline, logkit's own JSON builder
    {"logkit._schema_fields"},  # a schema applied to a record: its field builder
    {"logkit.formatters", "logkit.filters", "logkit._request"},
    {"logkit._structlog", "logkit.redaction", "logkit.handlers", "logkit.early",
     # the web request middlewares (optional extras): context and _request only
     "logkit.asgi", "logkit.wsgi", "logkit.django"},
    {"logkit.setup", "logkit.flask"},
    {"logkit.receivers"},
    {"logkit.banner"},
    {"logkit.events.base"},
    {"logkit.events.prose", "logkit.events.queue"},  # queue time: the stamps in a request
    {"logkit.events.task", "logkit.events.worker", "logkit.events.beat"},
    {"logkit.events"},
    {"logkit.control"},  # levels over remote control (its event is in events.worker)
    {"logkit.celery_options"},
    {"logkit.install"},
    {"logkit"},
    {"logkit.testing"},  # helpers for users' tests: read what install() set up
    {"logkit.pytest_plugin"},
    {"logkit.demo_app"},  # the demo's Celery app: `import logkit`, like a user's app
    {"logkit.demo"},
    {"logkit.cli"},
    {"logkit.__main__"},
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute name a (possibly relative) ``from ... import`` refers to."""
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def import_graph() -> dict[str, set[str]]:
    """logkit module -> the logkit modules it imports (anywhere in its code)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path, node)
                # `from .events import task` imports the submodule logkit.events.task
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names]
            else:
                continue
            for name in names:
                # `import logkit.x.y` imports logkit.x.y; keep the longest known prefix
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    targets.add(name)
        graph[module] = targets
    return graph


def _layer_of() -> dict[str, int]:
    return {module: index for index, layer in enumerate(LAYERS) for module in layer}


def test_the_graph_sees_relative_imports_and_imports_in_functions() -> None:
    graph = import_graph()
    assert "logkit.receivers" in graph["logkit.install"]  # `from . import receivers`
    assert "logkit.events.task" in graph["logkit.install"]  # `from .events import task`
    assert "logkit.receivers" in graph["logkit.events.base"]  # `from ..receivers import ...`
    assert "logkit.demo" in graph["logkit.cli"]  # inside the `demo` command's function


def test_every_module_has_a_layer() -> None:
    listed = [module for layer in LAYERS for module in layer]
    assert len(listed) == len(set(listed)), "a module is listed in two layers"
    assert set(_modules()) == set(listed), (
        "put each new module in LAYERS (and in the module map of docs/how-it-works.md)"
    )


def test_imports_go_down_only() -> None:
    layer = _layer_of()
    upward = [
        f"{module} (layer {layer[module]}) imports {target} (layer {layer[target]})"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if layer[target] >= layer[module]
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle() -> None:
    graph = import_graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module):], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


IMPORT_PROBE = """
import json, logging
make_record, factory = logging.Logger.makeRecord, logging.getLogRecordFactory()
handle, call_handlers = logging.Logger.handle, logging.Logger.callHandlers
from celery import signals
import logkit
import logkit.cli, logkit.celery_options, logkit.events, logkit.redaction  # every layer
import logkit._compat
from logkit.events import base, beat, prose, task, worker
connected = {
    name: len(getattr(signals, name).receivers)
    for name in signals.__all__
    if hasattr(getattr(signals, name), "receivers")
}
print(json.dumps({
    "connected": {name: n for name, n in connected.items() if n},
    "signals": len(connected),
    "make_record": logging.Logger.makeRecord is make_record,
    "factory": logging.getLogRecordFactory() is factory,
    "handle": logging.Logger.handle is handle and logging.Logger.callHandlers is call_handlers,
    "filters": {name: len(logging.getLogger(name).filters)
                for name in ("celery.app.trace", "celery.worker.strategy")},
    "levels": {name: logging.getLogger(name).level
               for name in ("celery.app.trace", "celery.worker.strategy")},
}))
"""


def test_importing_logkit_connects_nothing_and_patches_nothing() -> None:
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], cwd=ROOT, capture_output=True, text=True,
        check=True, timeout=120,
    )
    state = json.loads(out.stdout.splitlines()[-1])
    assert state["signals"] > 20  # the probe saw Celery's signals (task_prerun, setup_logging...)
    assert state["connected"] == {}
    assert state["make_record"] is True
    assert state["factory"] is True
    assert state["handle"] is True
    assert state["filters"] == {"celery.app.trace": 0, "celery.worker.strategy": 0}
    assert state["levels"] == {"celery.app.trace": 0, "celery.worker.strategy": 0}
