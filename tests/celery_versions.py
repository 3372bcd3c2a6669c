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
#: before the app is loaded: logkit adds its commands, see ``logkit._compat.add_control_actions``;
#: 5.3-5.6 hand an app's preload options to ``control()``, which takes none: see
#: ``SUBCOMMANDS_REFUSE_PRELOAD_OPTIONS``.)
CONTROL_HAS_LIST = CELERY >= (5, 4)

#: Celery 5.3 to 5.6 hand an app's preload options (logkit's ``--log-*``) to every
#: ``celery`` sub-command's function, and most of them take none (``celery result``,
#: ``call``, ``graph``, ``list``, ``upgrade``, ``logtool``, ``amqp``, ``control``; on
#: 5.3.0/5.3.1 also ``purge``, ``shell``, ``multi``, ``report``): a ``TypeError``. Celery
#: 5.7 takes them off (``consume_preload_options``); logkit does on the older releases
#: (``logkit._compat.fill_preload_gaps``), so the commands work on every minor.
SUBCOMMANDS_REFUSE_PRELOAD_OPTIONS = CELERY < (5, 7)

#: Celery 5.3.4 to 5.6's ``celery report`` takes the preload options (``**kwargs``) but
#: sends no ``user_preload_options`` with them; logkit leaves a command that takes them as
#: Celery has it. (5.3.0/5.3.1's refuses them: logkit sends the signal, as 5.7 does.)
REPORT_SENDS_NO_PRELOAD_OPTIONS = tuple(celery.VERSION[:3]) >= (5, 3, 4) and CELERY < (5, 7)

#: Celery 5.7 can start the prefork pool's children as new interpreters
#: (``worker_pool_start_method = "spawn"``, ``--pool-start-method spawn``); before, they
#: are always forked (billiard's default on Linux, whatever multiprocessing's default is:
#: forkserver from Python 3.14 on).
POOL_START_METHOD = CELERY >= (5, 7)
