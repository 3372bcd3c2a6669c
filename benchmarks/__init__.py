"""logkit's benchmark suite: ``python -m benchmarks [--quick] [--only ...]``.

Three benchmarks, each comparing logkit with its peers side by side in one run:

* :mod:`benchmarks.formatters` -- µs per record for the stdlib floor, Celery's
  ``TaskFormatter``, python-json-logger, structlog and logkit (json, console,
  plain): ``format()`` on a prebuilt record, a full ``logger.info`` call through a
  handler writing to ``/dev/null``, the same for ``logger.exception``, and disabled
  (level-filtered) calls;
* :mod:`benchmarks.tasks` -- per-task cost of an empty ``task.apply()`` with Celery's
  logging, logkit (context + events) and logkit's context only, and the publishing
  side (``apply_async``), each variant in fresh interpreters, alternating;
* :mod:`benchmarks.worker` -- tasks/s of a real prefork worker with Celery's
  default logging and with logkit json, and CPU per task of its processes.

Timing method of the formatter tables (:mod:`benchmarks.timing`): all cases of a
table run in one process, interleaved (A B C ... A B C ...) for many rounds; each
figure is the median over the rounds of the per-call time, and ratios are taken
against the first row. The per-task tables: see :mod:`benchmarks.tasks`.
"""
