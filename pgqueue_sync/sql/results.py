"""SQL of pgqueue_sync's own, opt-in results table (``{prefix}pgqueue_sync_results``).

The table is not part of PgQueuer's schema: ``pgq verify`` and ``pgq upgrade``
look only at their four tables, enum, function and trigger, and leave other
objects alone, so it can sit beside them. It depends on none of PgQueuer's
objects (``status`` is ``text``, not the status enum), so ``pgq uninstall``
still works with it present.

Names reach SQL only as :class:`~psycopg.sql.Identifier`, values as bound
parameters.
"""

from __future__ import annotations

from psycopg import sql

from ..settings import DBSettings

#: Suffix of the index that serves pruning by age.
FINISHED_INDEX_SUFFIX = "finished_idx"

# Written by the worker in the same statement as the outcome (see
# outcomes.OutcomeStatements.log_jobs): only jobs whose row the
# statement really deleted or held get a result row, so a job cancelled
# meanwhile is not reported as successful. The error of a failed job comes
# from its traceback record; ``note`` explains a value that could not be stored.
# A row may exist before the outcome (the Django Tasks backend writes one at
# enqueue, describing the task): an outcome without a value keeps its result.
_STORE_RESULTS = """stored AS (
    INSERT INTO {results} AS r
        (job_id, entrypoint, status, result, error, created, finished, attempts,
         queue_manager_id)
    SELECT f.id, f.entrypoint, f.status::text, v.result,
           COALESCE(v.note, CASE WHEN f.traceback IS NOT NULL THEN concat_ws(': ',
               f.traceback ->> 'exception_type',
               NULLIF(f.traceback ->> 'exception_message', '')) END),
           v.created, NOW(), v.attempts, v.queue_manager_id
    FROM (
        SELECT DISTINCT ON (w.id) w.*
        FROM unnest(
            %(result_ids)s::bigint[], %(result_values)s::jsonb[], %(result_notes)s::text[],
            %(result_created)s::timestamptz[], %(result_attempts)s::integer[],
            %(result_workers)s::uuid[]
        ) AS w(id, result, note, created, attempts, queue_manager_id)
    ) v
    JOIN (
        SOURCES
    ) f ON f.id = v.id
    ON CONFLICT (job_id) DO UPDATE SET
        entrypoint = EXCLUDED.entrypoint, status = EXCLUDED.status,
        result = COALESCE(EXCLUDED.result, r.result),
        error = EXCLUDED.error, created = COALESCE(EXCLUDED.created, r.created),
        finished = EXCLUDED.finished,
        attempts = EXCLUDED.attempts, queue_manager_id = EXCLUDED.queue_manager_id
)"""


def store_results_cte(sources: list[str]) -> str:
    """The ``stored`` step, for the outcome steps (CTE names) ``sources`` of a finish."""
    union = "\n        UNION ALL\n        ".join(
        f"SELECT id, entrypoint, status, traceback FROM {name}" for name in sources
    )
    return _STORE_RESULTS.replace("SOURCES", union)


def table(settings: DBSettings) -> sql.Identifier:
    """The qualified identifier of the results table."""
    return settings.ident("results_table")


def index_name(settings: DBSettings) -> str:
    """The bare name of the ``finished`` index."""
    return settings.index_name(FINISHED_INDEX_SUFFIX, "results_table")


def install_statements(settings: DBSettings, *, create_schema: bool = True) -> list[sql.Composed]:
    """Create the table and its index (idempotent: ``IF NOT EXISTS``).

    ``create_schema``: begin with ``CREATE SCHEMA IF NOT EXISTS`` when a schema is set.
    """
    statements: list[sql.Composed] = []
    if settings.db_schema and create_schema:
        statements.append(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(settings.db_schema))
        )
    statements.append(
        sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
    job_id bigint PRIMARY KEY,
    entrypoint text NOT NULL,
    status text NOT NULL,
    result jsonb,
    error text,
    created timestamp with time zone,
    finished timestamp with time zone NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    queue_manager_id uuid
)""").format(table(settings))
    )
    statements.append(
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (finished)").format(
            sql.Identifier(index_name(settings)), table(settings)
        )
    )
    return statements


def uninstall_statements(settings: DBSettings) -> list[sql.Composed]:
    """Drop the table (and with it its index), ``IF EXISTS``."""
    return [sql.SQL("DROP TABLE IF EXISTS {}").format(table(settings))]


def exists(settings: DBSettings) -> tuple[sql.SQL, dict[str, str]]:
    """A query answering ``present``: does the results table exist?"""
    return (
        sql.SQL("SELECT to_regclass(%(name)s) IS NOT NULL AS present"),
        {"name": table(settings).as_string()},
    )


def select_results(settings: DBSettings) -> sql.Composed:
    """The stored rows of ``%(ids)s``."""
    return sql.SQL(
        "SELECT job_id, entrypoint, status, result, error, created, finished, attempts, "
        "queue_manager_id FROM {} WHERE job_id = ANY(%(ids)s::bigint[]) ORDER BY job_id"
    ).format(table(settings))


#: The gate of an ungated prune: always go.
NO_GATE = "SELECT TRUE AS go"


def prune_batch(settings: DBSettings, *, gate: str = NO_GATE) -> sql.Composed:
    """Delete up to ``%(batch)s`` rows finished more than ``%(age)s`` ago; returns
    ``count`` and ``locked``.

    Rows of jobs still in the queue (e.g. written at enqueue by the Django
    Tasks backend, or held as ``failed``) are kept. ``gate`` is a query
    answering ``go``: the workers' pruner passes
    :data:`~pgqueue_sync.sql.ops.RETENTION_GATE` (the retention lock, tried,
    never waited for); ``locked`` says whether it was taken.
    """
    return sql.SQL("""
WITH gate AS MATERIALIZED (""" + gate + """),
doomed AS (
    SELECT job_id FROM {results} r
    WHERE (SELECT go FROM gate)
      AND finished < NOW() - %(age)s::interval
      AND NOT EXISTS (SELECT 1 FROM {queue} q WHERE q.id = r.job_id)
    ORDER BY finished
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
),
gone AS (
    DELETE FROM {results} r USING doomed d WHERE r.job_id = d.job_id RETURNING 1
)
SELECT count(*) AS count, (SELECT go FROM gate) AS locked FROM gone
""").format(results=table(settings), queue=settings.ident("queue_table"))
