"""The trigger function and trigger that NOTIFY the workers when the queue table changes.

The function body is PgQueuer 1.6.0's, verbatim; the function name reaches SQL
only as :class:`~psycopg.sql.Identifier`, the body and channel only as
:class:`~psycopg.sql.Literal`.
"""

from __future__ import annotations

from psycopg import sql

from ...settings import DBSettings

#: ``pg_trigger.tgtype`` of AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE FOR EACH STATEMENT.
TRIGGER_TGTYPE = 60

# The trigger function body, exactly as PgQueuer 1.6.0 stores it in ``pg_proc.prosrc``
# (taken from the catalog of a ``pgq install`` database). ``pgq upgrade`` compares it
# token for token, comments included, so it must not be edited. ``@CHANNEL@`` stands
# for the channel, rendered as an SQL string literal.
_FUNCTION_BODY = """
DECLARE
    to_emit BOOLEAN := false;  -- Flag to decide whether to emit a notification
BEGIN
    -- Check operation type and set the emit flag accordingly
    IF TG_OP = 'UPDATE' AND OLD IS DISTINCT FROM NEW THEN
        to_emit := true;
    ELSIF TG_OP = 'DELETE' THEN
        to_emit := true;
    ELSIF TG_OP = 'INSERT' THEN
        to_emit := true;
    ELSIF TG_OP = 'TRUNCATE' THEN
        to_emit := true;
    END IF;

    -- Perform notification if the emit flag is set
    IF to_emit THEN
        PERFORM pg_notify(
            @CHANNEL@,
            json_build_object(
                'channel', @CHANNEL@,
                'operation', lower(TG_OP),
                'sent_at', NOW(),
                'table', TG_TABLE_NAME,
                'type', 'table_changed_event'
            )::text
        );
    END IF;

    -- Return appropriate value based on the operation
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        RETURN NEW;
    ELSIF TG_OP = 'DELETE' THEN
        RETURN OLD;
    ELSE
        RETURN NULL; -- For TRUNCATE and other non-row-specific contexts
    END IF;

END;
"""


def function_body(channel: str) -> str:
    """The trigger function's ``prosrc`` for ``channel`` (validated by DBSettings)."""
    return _FUNCTION_BODY.replace("@CHANNEL@", sql.Literal(channel).as_string())


def collapse_whitespace(text: str) -> str:
    """Text with whitespace runs collapsed, as ``pgq upgrade`` compares function bodies."""
    return " ".join(text.split())


def create_function(settings: DBSettings, *, replace: bool = False) -> sql.Composed:
    """The PL/pgSQL trigger function that NOTIFYs ``table_changed_event`` on the channel."""
    return sql.SQL("CREATE {}FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
        sql.SQL("OR REPLACE " if replace else ""),
        settings.ident("function"),
        sql.Literal(function_body(settings.channel)),
    )


def create_trigger(settings: DBSettings) -> sql.Composed:
    """The statement-level AFTER INSERT/UPDATE/DELETE/TRUNCATE trigger on the queue table."""
    return sql.SQL(
        "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {} "
        "FOR EACH STATEMENT EXECUTE FUNCTION {}()"
    ).format(
        sql.Identifier(settings.bare_name("trigger")),
        settings.ident("queue_table"),
        settings.ident("function"),
    )


def drop_trigger(settings: DBSettings) -> sql.Composed:
    """``DROP TRIGGER IF EXISTS`` on the queue table."""
    return sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
        sql.Identifier(settings.bare_name("trigger")), settings.ident("queue_table")
    )
