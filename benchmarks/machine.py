"""Description of the machine and software a benchmark ran on."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

PACKAGES = ("logkit", "celery", "kombu", "billiard", "structlog", "python-json-logger", "orjson")


def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (or ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> list[str]:
    """Markdown bullet lines: CPU, cores, OS, Python and package versions."""
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    return [
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores "
        f"(usable by this process: {len(os.sched_getaffinity(0))})",
        f"- OS: {platform.platform()}",
        f"- Python: {sys.version.split()[0]} ({platform.python_implementation()})",
        f"- Packages: {', '.join(versions)}",
    ]
