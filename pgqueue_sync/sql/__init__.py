"""SQL text: the runtime statements and the schema DDL."""

from __future__ import annotations
