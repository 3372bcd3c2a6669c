"""``python -m logkit``: the same as the ``logkit`` command (``demo``, ``view``)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main(prog_name="python -m logkit")
