"""What differs between the Celery minors logkit supports (5.3 to 5.7), for the tests.

A test that meets a difference asserts the older behaviour on the older minors (or
skips there, with the reason in the summary); docs/compatibility.md has a row per minor.
"""

from __future__ import annotations

import celery

#: The running Celery's ``(major, minor)``.
CELERY = (celery.VERSION.major, celery.VERSION.minor)

#: Celery < 5.6 gives a task run by ``apply()`` inside another task no ``parent_id`` nor
#: ``root_id`` in its request; logkit's records take them from the calling task.
APPLY_HAS_NO_LINEAGE = CELERY < (5, 6)

#: Celery 5.3 prints ``worker: Warm shutdown (MainProcess)`` as text on stderr (5.4+: on
#: stdout). With JSON output logkit leaves it out (the ``worker_shutting_down`` event says
#: it); with console or plain output it stays, as Celery prints it.
SHUTDOWN_NOTICE = "worker: Warm shutdown (MainProcess)"
SHUTDOWN_NOTICE_ON_STDERR = CELERY < (5, 4)

#: Celery 5.3's ``celery control``/``celery inspect`` have no ``--list``: the commands
#: are the choices of their first argument, shown by ``--help``. (5.3 fixes those choices
#: before the app is loaded, and 5.3-5.5 hand an app's preload options to ``control()``,
#: which takes none: logkit fills both gaps, see ``logkit.control._fill_cli_gaps``.)
CONTROL_HAS_LIST = CELERY >= (5, 4)
