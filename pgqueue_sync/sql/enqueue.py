"""The enqueue statement: what an enqueue writes, defined once.

Every enqueue, :meth:`Queries.enqueue <pgqueue_sync.queries.Queries.enqueue>`
and the Django Tasks backend alike, inserts its queue rows and their
``queued`` log rows with :func:`enqueue_template`; the trigger on the queue
table notifies the workers. A caller that writes more in the same statement
(the Django backend's results row) adds its own CTEs after the shared ones.

The statement takes parallel arrays, one element per job: ``%(priority)s``,
``%(entrypoint)s``, ``%(delay)s``, ``%(at)s`` (``at`` wins when set),
``%(dedupe_key)s``, ``%(payload)s`` and ``%(headers)s``; and ``%(table)s``,
the queue table's text for ``pg_get_serial_sequence`` (see
:attr:`EnqueueStatements.queue_table_text`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from psycopg import sql

from .statement_set import StatementSet

#: The predicate of the unique dedupe-key index, so that ON CONFLICT infers that index.
_ACTIVE_DEDUPE_KEY = "dedupe_key IS NOT NULL AND status IN ('queued', 'picked')"

#: What a duplicate dedupe key does, per ``on_conflict`` mode ("raise": the index raises).
_CONFLICT_CLAUSES = {
    "raise": "",
    "skip": "ON CONFLICT (dedupe_key) WHERE " + _ACTIVE_DEDUPE_KEY + " DO NOTHING",
    "update_priority": (
        "ON CONFLICT (dedupe_key) WHERE " + _ACTIVE_DEDUPE_KEY + " "
        "DO UPDATE SET priority = GREATEST(q.priority, EXCLUDED.priority)"
    ),
}

#: The input rows, their ids drawn up front so that the result can map every
#: input position to its job id (``NULL`` where a row was skipped as a duplicate).
_INPUT = """
WITH input AS MATERIALIZED (
    SELECT nextval((SELECT pg_get_serial_sequence(%(table)s, 'id'))::regclass) AS id, t.*
    FROM unnest(
        %(priority)s::integer[], %(entrypoint)s::text[], %(delay)s::interval[],
        %(at)s::timestamptz[], %(dedupe_key)s::text[], %(payload)s::bytea[],
        %(headers)s::jsonb[]
    ) WITH ORDINALITY AS t(priority, entrypoint, delay, at, dedupe_key, payload, headers, ord)
),
"""

#: The queue rows, before and after the ON CONFLICT clause; ``fresh``: really inserted.
_WRITTEN_HEAD = """written AS (
    INSERT INTO {queue} AS q
        (id, priority, status, entrypoint, execute_after, dedupe_key, payload, headers)
    SELECT id, priority, 'queued', entrypoint, COALESCE(at, NOW() + delay),
           dedupe_key, payload, headers
    FROM input
    """
_WRITTEN_TAIL = """
    RETURNING q.id, q.entrypoint, q.priority, q.dedupe_key, (q.xmax::text = '0') AS fresh
),
"""

#: The ``queued`` log row of each job really inserted.
_LOGGED = """logged AS (
    INSERT INTO {log} (job_id, status, entrypoint, priority)
    SELECT id, 'queued', entrypoint, priority FROM written WHERE fresh
)"""

# The enqueue result, by "raise" mode: there every row is inserted or the
# statement fails, so the ids drawn up front are the answer (data-modifying
# CTEs run whether or not they are referenced); otherwise map skipped and
# priority-updated rows to what the table holds.
_JOB_IDS = {
    True: "SELECT id FROM input ORDER BY ord\n",
    False: """SELECT COALESCE(w.id, u.id) AS id
FROM input i
LEFT JOIN written w ON w.id = i.id
LEFT JOIN written u ON NOT u.fresh AND u.dedupe_key = i.dedupe_key
ORDER BY i.ord
""",
}


def enqueue_template(
    on_conflict: str, *, then: Sequence[str] = (), result: str | None = None
) -> str:
    """The enqueue statement, tables in braces: insert the batch and log ``queued``
    for the rows really inserted.

    ``then``: more CTEs for the same statement (``name AS (...)``); they may read
    ``written`` (``id``, ``entrypoint``, ``priority``, ``dedupe_key``, ``fresh``).
    ``result``: the final query, by default the job ids in input order.
    """
    written = _WRITTEN_HEAD + _CONFLICT_CLAUSES[on_conflict] + _WRITTEN_TAIL
    final = _JOB_IDS[on_conflict == "raise"] if result is None else result
    return _INPUT + written + ",\n".join([_LOGGED, *then]) + "\n" + final


class EnqueueStatements(StatementSet):
    """The enqueue statements of one set of object names."""

    @property
    def queue_table_text(self) -> str:
        """The quoted, qualified queue table name, bound for ``pg_get_serial_sequence``.

        The id sequence is looked up rather than named by convention: PostgreSQL
        shortens a long table's sequence name, and an operator may rename it.
        """
        return self.settings.ident("queue_table").as_string()

    @functools.cache  # noqa: B019 - one cache entry per mode, for life
    def enqueue(self, on_conflict: str) -> sql.SQL:
        """Insert a batch (parallel arrays) and log ``queued`` for rows really inserted.

        Ids are drawn up front so the result maps every input position to its
        job id (``NULL`` where a row was skipped as a duplicate).
        """
        return self._sql(enqueue_template(on_conflict))

    def enqueue_then(self, then: Sequence[str], result: str) -> sql.SQL:
        """:meth:`enqueue` in ``"raise"`` mode, going on with the caller's own CTEs
        ``then`` and final query ``result`` (see :func:`enqueue_template`)."""
        return self._sql(enqueue_template("raise", then=then, result=result))
