"""Drivers: run SQL and translate database errors; nothing else."""

from __future__ import annotations

from .base import Driver, Params, Query, Row, translate, translate_errors
from .psycopg import SyncPsycopgDriver, SyncPsycopgPoolDriver, connect, describe_conninfo

__all__ = [
    "Driver",
    "Params",
    "Query",
    "Row",
    "SyncPsycopgDriver",
    "SyncPsycopgPoolDriver",
    "connect",
    "describe_conninfo",
    "translate",
    "translate_errors",
]
