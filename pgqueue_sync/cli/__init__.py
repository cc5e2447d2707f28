"""The ``pgq-sync`` command line (click). Nothing below :mod:`pgqueue_sync.cli` imports it.

:mod:`.main` defines the ``cli`` group and its core commands; each other module
adds a family of commands to that group when imported, which this package does
here, so ``from pgqueue_sync.cli import cli`` gives the complete command line.
"""

from __future__ import annotations

from . import autovac, grants, metrics, ops, results  # noqa: F401  (register their commands)
from .group import cli, main

__all__ = ["cli", "main"]
