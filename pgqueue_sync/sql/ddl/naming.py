"""Where each schema object lives and how DDL and the catalog spell names and labels.

Configurable names reach SQL only as :class:`~psycopg.sql.Identifier`; enum
labels only as :class:`~psycopg.sql.Literal`.
"""

from __future__ import annotations

import zlib

from psycopg import sql

from ...settings import DBSettings
from .spec import STATUS_LABELS, TABLE_FIELDS, TableRole


def table_ident(settings: DBSettings, role: TableRole) -> sql.Identifier:
    """The qualified identifier of the table playing ``role``."""
    return settings.ident(TABLE_FIELDS[role])


def sibling_ident(settings: DBSettings, field: str, name: str) -> sql.Identifier:
    """``name`` qualified with the schema of the object in ``field`` (indexes, legacy enum)."""
    parts = settings.qualified_parts(field)[:-1]
    return sql.Identifier(*(p.lower() for p in parts), name)


def index_ident(settings: DBSettings, role: TableRole, name: str) -> sql.Identifier:
    """An index of the ``role`` table, qualified with that table's schema."""
    return sibling_ident(settings, TABLE_FIELDS[role], name)


def legacy_status_name(settings: DBSettings) -> str:
    """The bare name of the pre-0.27 statistics enum."""
    return settings.legacy_statistics_status_type.lower()


def legacy_status_ident(settings: DBSettings) -> sql.Identifier:
    """The pre-0.27 statistics enum, in the status enum's schema."""
    return sibling_ident(settings, "queue_status_type", legacy_status_name(settings))


def rebuild_name(index_name: str) -> str:
    """The temporary name a differing index is rebuilt under, as ``pgq upgrade`` names it."""
    return f"pgq_rebuild_{zlib.crc32(index_name.encode()):08x}"


def advisory_lock_key(settings: DBSettings) -> int:
    """The advisory lock number ``pgq upgrade`` serialises on (CRC32 of the queue table)."""
    return zlib.crc32(settings.qualified_text("queue_table").encode())


def catalog_text(template: str, settings: DBSettings) -> str:
    """A default or index tail as the catalog prints it, with the enum type unqualified.

    Used only to compare with catalog output, never executed.
    """
    bare = settings.bare_name("queue_status_type")
    return template.format(**{label: f"'{label}'::{bare}" for label in STATUS_LABELS})


def status_literal(settings: DBSettings, label: str) -> sql.Composed:
    """``'label'::<status enum>``, schema-qualified when a schema is configured."""
    return sql.SQL("{}::{}").format(sql.Literal(label), settings.ident("queue_status_type"))


def with_status_literals(template: str, settings: DBSettings) -> sql.Composed:
    """A default or index tail as executable SQL: ``{queued}`` becomes
    :func:`status_literal` ``queued``, and so on."""
    literals = {label: status_literal(settings, label) for label in STATUS_LABELS}
    return sql.SQL(template).format(**literals)
