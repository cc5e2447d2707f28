"""The package version, kept in one place for setup.cfg and the CLI."""

from __future__ import annotations

__version__ = "0.1.0"
