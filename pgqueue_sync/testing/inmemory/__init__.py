"""The in-memory adapter: the queue's tables and NOTIFY channel inside one process.

For unit tests and demos without PostgreSQL, like PgQueuer's ``InMemoryDriver`` +
``InMemoryQueries``. Users import it from :mod:`pgqueue_sync.testing`.

What it cannot reproduce:

* **No durability.** Everything lives in the :class:`InMemoryDriver` object and is
  gone with it.
* **One process.** Threads of one process share a driver; other processes (and
  PgQueuer workers) cannot see it.
* **No caller transactions.** Each method is atomic on its own, as one statement
  under autocommit is; there is no ``transaction()`` to join, so "enqueue inside
  my transaction" cannot be tested here.
* **No lock contention.** One lock serialises every operation, so the seat races
  and deadlocks a real fleet can hit (answered there with an empty batch) never
  happen.
* **One set of tables per driver.** ``settings`` only name the channel, the table
  in ``table_changed_event`` and the index in errors; two ``InMemoryQueries`` with
  different prefixes over one driver share the same rows.

The adapter's parts mirror :mod:`pgqueue_sync.queries`: :mod:`.tables` (the
rows), :mod:`.driver` (the storage, atomic statements and notifications),
:mod:`.base`, and one module per group of operations (:mod:`.producing`,
:mod:`.claiming`, :mod:`.outcomes`, :mod:`.cancellation`, :mod:`.bulk`,
:mod:`.inspection`, :mod:`.housekeeping`, :mod:`.statistics`,
:mod:`.schedules`). They validate arguments and map rows through the same
public helpers as :class:`~pgqueue_sync.queries.Queries`
(:mod:`pgqueue_sync.queries.batch`, :mod:`pgqueue_sync.queries.values`).
"""

# DROP-IN CONTRACT. The worker (QueueManager, buffers, heartbeats, scheduler) talks
# to ``Queries`` only, so InMemoryQueries must stay a duck-typed twin of it:
#   * attributes ``driver`` and ``settings`` (``settings.channel`` names the channel);
#   * every public method of Queries except the psycopg constructors
#     (``from_connection``, ``from_pool``), with the same signature, the same
#     validation and errors (ConfigurationError, DuplicateJobError, UniqueViolation)
#     and the same return types: enqueue, dequeue, log_jobs, retry_job, release_jobs,
#     requeue_jobs, list_failed_jobs, last_errors, plan_bulk, run_bulk,
#     mark_job_as_cancelled, notify_job_cancellation,
#     notify_health_check, update_heartbeat, queue_size, queue_log, job_status,
#     queued_work, eligible_queued_work, poll_state, next_deferred_eta, clear_queue,
#     clear_queue_log, clear_statistics_log, aggregate_logs, prune_expired, log_statistics,
#     insert_schedule, fetch_schedule, set_schedule_queued, update_schedule_heartbeat,
#     peek_schedule, delete_schedule, clear_schedule;
#   * ``driver.add_listener(callback) -> unsubscribe``: the LISTEN replacement,
#     fed the exact payloads the database would send on the channel.
# tests/test_inmemory.py checks the method set and signatures against Queries.

from __future__ import annotations

from .bulk import InMemoryBulk
from .cancellation import InMemoryCancellation
from .claiming import InMemoryClaiming
from .driver import InMemoryDriver
from .housekeeping import InMemoryHousekeeping
from .inspection import InMemoryInspection
from .producing import InMemoryProducing
from .schedules import InMemorySchedules
from .statistics import InMemoryStatistics


class InMemoryQueries(
    InMemoryProducing,
    InMemoryClaiming,
    InMemoryCancellation,
    InMemoryBulk,
    InMemoryInspection,
    InMemoryHousekeeping,
    InMemoryStatistics,
    InMemorySchedules,
):
    """:class:`~pgqueue_sync.queries.Queries` over an :class:`InMemoryDriver`.

    Same methods, signatures, validation, errors and return types, and the same
    rows, log entries and notifications as the SQL statements produce. Each
    method is atomic and thread-safe. See the module docstring for what differs.
    """


__all__ = ["InMemoryDriver", "InMemoryQueries"]
