"""The ``pgq-sync`` command line (click). Nothing below :mod:`pgqueue_sync.cli` imports it.

:mod:`.group` defines the ``cli`` group, its global options and its errors;
each command module adds a family of commands to that group when imported,
which this package does here, so ``from pgqueue_sync.cli import cli`` gives the
complete command line.
"""

from __future__ import annotations

from . import (  # noqa: F401  (register their commands)
    autovac,
    grants,
    inspection,
    jobs,
    live,
    metrics,
    prune,
    results,
    schedules,
    schema,
    worker,
)
from .group import cli, main

__all__ = ["cli", "main"]
