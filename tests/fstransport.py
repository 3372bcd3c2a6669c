"""kombu's filesystem transport, fit for tests: atomic puts and a quick warm shutdown.

Copied into the workers' generated app modules by ``workerutil.make_app`` (so no
``from __future__`` import here), and imported by the Django test project's settings
(``test_django`` puts this folder on its ``PYTHONPATH``).
"""

import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.json import dumps


class AtomicChannel(filesystem.Channel):
    """kombu writes a message file in place, so a consumer polling at that moment can
    read half a message (``Unrecoverable error: JSONDecodeError`` kills the worker).
    Write to a temporary name, then rename: the consumer sees all of it or nothing.
    The temporary name holds no ``.<queue>.msg``: kombu before 5.6 (Celery 5.5's) takes
    every file whose name contains it, a half-written one too.
    """

    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        tmp = os.path.join(self.data_folder_out, f"part-{uuid.uuid4()}")
        with open(tmp, "wb") as fh:
            fh.write(dumps(payload).encode())
        os.replace(tmp, os.path.join(self.data_folder_out, name))


class FastFilesystemTransport(filesystem.Transport):
    """Atomic puts, and ``drain_events()`` blocks at most 0.1 s.

    Celery's synloop (used for non-async transports) drains with a fixed timeout=2.0 and
    runs one more drain cycle after the shutdown flag is set, which makes every warm
    shutdown take ~4-6 s. Capping the timeout lets the worker notice SIGTERM within
    ~0.1 s; nothing else changes.
    """

    Channel = AtomicChannel

    def drain_events(self, connection: Any, timeout: Any = None) -> Any:
        if timeout is not None and timeout > 0.1:
            timeout = 0.1
        return super().drain_events(connection, timeout=timeout)
