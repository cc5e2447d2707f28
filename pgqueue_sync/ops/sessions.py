"""How a worker names its own database session, for ``pgq-sync workers``.

:func:`label_worker_session` is the worker's side of
:meth:`~pgqueue_sync.ops.queries.OpsQueries.live_workers`: it names the
worker's own LISTEN connection so that the session can be found in
``pg_stat_activity`` while the worker runs, idle or not.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import psycopg

from ..settings import DBSettings, db_settings
from ..sql.ops import LABEL_WORKER_SESSION, WORKER_SESSION_PREFIX, OpsStatements

logger = logging.getLogger(__name__)


def label_worker_session(
    connection: psycopg.Connection[Any],
    queue_manager_id: uuid.UUID,
    settings: DBSettings | None = None,
) -> str | None:
    """Name ``connection``'s session after a worker, for :meth:`OpsQueries.live_workers`.

    Sets ``application_name`` to ``pgq-sync worker <queue_manager_id> <oid>`` for
    the rest of the session (``<oid>``: the queue table's, resolved by the
    server; 52 + up to 11 bytes, within PostgreSQL's 63). Meant for a connection
    the worker owns: the name stays until the session ends. Best effort: a
    failure is logged and returns ``None``; the session just goes unnamed.
    """
    names = OpsStatements(settings or db_settings())
    params = {"label": f"{WORKER_SESSION_PREFIX}{queue_manager_id}",
              "queue_regclass": names.queue_regclass}
    try:
        row = connection.execute(LABEL_WORKER_SESSION, params).fetchone()
    except psycopg.Error as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        logger.warning("could not set application_name on the worker's connection: %s",
                       first_line)
        return None
    return str(row[0]) if row else None
