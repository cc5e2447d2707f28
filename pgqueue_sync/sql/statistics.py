"""Statistics: folding log rows into per-second buckets, and reading the buckets back."""

from __future__ import annotations

import functools

from psycopg import sql

from .statement_set import StatementSet


class StatisticsStatements(StatementSet):
    """Statements on the statistics table (PgQueuer's ``{prefix}pgqueuer_statistics``)."""

    @functools.cache  # noqa: B019 - two variants
    def aggregate_logs(self, *, locked: bool) -> sql.SQL:
        """Fold unaggregated log rows into per-second statistics buckets.

        ``locked``: only proceed when ``pg_try_advisory_xact_lock`` on PgQueuer's
        key succeeds, so concurrent workers (sync or async) never double count;
        and fold at most ``%(chunk)s`` rows, returning how many (``flipped``), so
        a backlog of log rows is folded in short transactions: one long one
        would keep VACUUM from removing the queue's dead rows meanwhile.
        """
        gate = "pg_try_advisory_xact_lock(hashtext(%(lock_key)s))" if locked else "TRUE"
        chosen = ("l.id IN (SELECT n.id FROM {log} n WHERE NOT n.aggregated LIMIT %(chunk)s)"
                  if locked else "TRUE")
        return self._sql("""
WITH gate AS (SELECT """ + gate + """ AS go),
flipped AS (
    UPDATE {log} l SET aggregated = TRUE
    FROM gate
    WHERE gate.go AND NOT l.aggregated AND """ + chosen + """
    RETURNING l.entrypoint, l.priority, l.status, date_trunc('sec', l.created) AS created
),
buckets AS (
    SELECT count(*) AS count, created, entrypoint, priority, status
    FROM flipped GROUP BY created, entrypoint, priority, status
),
stored AS (
    INSERT INTO {stats} AS s (count, created, entrypoint, priority, status)
    SELECT count, created, entrypoint, priority, status FROM buckets
    ON CONFLICT (priority, date_trunc('sec'::text, timezone('UTC'::text, created)), status,
                 entrypoint)
    DO UPDATE SET count = s.count + EXCLUDED.count
)
SELECT count(*) AS flipped FROM flipped
""")

    @functools.cached_property
    def log_statistics(self) -> sql.SQL:
        """The newest statistics buckets, optionally only those newer than ``%(last)s``."""
        return self._sql("""
SELECT count, created, entrypoint, priority, status::text AS status
FROM {stats}
WHERE %(last)s::interval IS NULL OR created > NOW() - %(last)s::interval
ORDER BY id DESC
LIMIT %(limit)s
""")
